-- moonring app for `make bench`: GET /events subscribes to the server-sent
-- events that POST /publish fans out (bench/app/publish.lua). The stream's
-- `events` object goes in the module-level registry (bench/app/_sse_hub.lua),
-- the publisher writes to it directly, and req.on_close drops it when the
-- client leaves. Heartbeats are sse.response's default (a comment every 15 s).
local sse = require "moonring.sse"
local hub = require "_sse_hub"

return function(req)
  return sse.response(req, function(events)
    hub.add(events)
    req.on_close(function() hub.remove(events) end)
    events:wait()                       -- until the client leaves
  end)
end
