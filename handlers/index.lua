-- / — lists the app's routes. Each file in handlers/ is a route. With
-- --watch (on with --dev, so `make run` has it) save an edit and the next
-- request runs the new code; SIGHUP reloads in any mode (docs/reload.md).
local moonring = require "moonring"

return function(req)
  local lines = {
    "<!doctype html><title>moonring</title>",
    "<h1>moonring " .. moonring.version .. "</h1>",
    "<p>Each file under <code>handlers/</code> is a route. Try:</p><ul>",
  }
  for _, r in ipairs(moonring.routes()) do
    local href = r.path:gsub(":id", "42"):gsub("%*%w+", "a/b")
    local methods = r.methods and (" (" .. table.concat(r.methods, ", ") .. ")") or ""
    lines[#lines + 1] = string.format('<li><a href="%s">%s</a>%s — <code>%s</code></li>',
      href, r.path, methods, r.file)
  end
  lines[#lines + 1] = "</ul>"
  -- An array of strings is a body too: written in order, no concatenation.
  return { status = 200, headers = { ["content-type"] = "text/html; charset=utf-8" }, body = lines }
end
