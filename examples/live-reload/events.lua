-- GET /events — one event a second, each naming the code version that sends
-- it. A stream opened before a reload goes on with the code it started with.
local moonring = require "moonring"
local sse = require "moonring.sse"
local version = require "_lib.version"

return function(req)
  return sse.response(req, function(events)
    for n = 1, 600 do
      if not events:send { event = "tick", data = version.name .. " " .. n } then return end
      moonring.sleep(1)
    end
  end, { heartbeat = false })
end
