-- /clock — Server-Sent Events: the server's time, once a second, for as
-- long as the client listens. Try `curl -N localhost:8080/clock`, or
-- `new EventSource("/clock")` in a browser console. When the client leaves,
-- the stream's task is cancelled and the loop ends.
local moonring = require "moonring"
local sse = require "moonring.sse"

return function(req)
  return sse.response(req, function(events)
    local n = tonumber(events.last_event_id) or 0
    while true do
      n = n + 1
      if not events:send { id = n, event = "tick", data = os.date("!%Y-%m-%dT%H:%M:%SZ") } then
        return
      end
      moonring.sleep(1)
    end
  end)
end
