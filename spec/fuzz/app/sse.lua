-- /sse : Server-Sent Events, two events then the end.
local sse = require "moonring.sse"

return function(req)
  return sse.response(req, function(events)
    events:send { id = 1, event = "a", data = "one\ntwo" }
    events:send("three")
  end, { heartbeat = false })
end
