-- moonring app for `make bench`: POST /publish sends its body as the data of
-- one event to every subscriber of GET /events (bench/app/events.lua), and
-- answers "subscribers N dropped D\n": N streams it was written to, D
-- skipped because that client was behind by more than --write-buffer
-- (try_write never waits, so no subscriber holds up the publisher). The
-- event is encoded once for all of them.
local sse = require "moonring.sse"
local hub = require "_sse_hub"

return {
  POST = function(req)
    local text = sse.encode { data = req.body and req.body:read("a") or "" }
    local sent, dropped = 0, 0
    for events in pairs(hub.subscribers) do
      local ok = events.out:try_write(text)
      if ok then
        sent = sent + 1
      elseif ok == false then
        dropped = dropped + 1
      end
    end
    return {
      status = 200,
      headers = { ["content-type"] = "text/plain" },
      body = "subscribers " .. sent .. " dropped " .. dropped .. "\n",
    }
  end,
}
