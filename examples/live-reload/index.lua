-- GET / — what this app shows, and the state that survives reloads.
local moonring = require "moonring"
local version = require "_lib.version"
local stats = require "_lib.stats"

return function(req)
  local w = moonring.worker()
  local lines = {
    "live-reload: edit _lib/version.lua (or any file here), save, and ask again.\n\n",
    string.format("code version:    %s\n", version.name),
    string.format("requests seen:   %d (kept by moonring.state across reloads)\n", stats.requests),
    string.format("reloads seen:    %d (counted by on_reload hooks)\n", stats.reloads),
    string.format("worker:          %d, pid %d\n\n", w.id, w.pid),
    "GET /hello?name=you   a greeting from _lib/version.lua\n",
    "GET /events           an SSE stream; each event names the code that sent it.\n",
    "                      Open it, edit, save: it keeps streaming from the old code,\n",
    "                      while a new /events runs the new.\n",
  }
  return { status = 200, headers = { ["content-type"] = "text/plain; charset=utf-8" }, body = lines }
end
