-- /slow?s=0.5 — waits without blocking anyone else: moonring.sleep parks
-- this request's coroutine, and the loop serves other clients meanwhile.
local moonring = require "moonring"

return function(req)
  local seconds = tonumber((req.query_string or ""):match("s=([%d.]+)")) or 0.5
  seconds = math.min(seconds, 10)
  local started = os.clock()
  moonring.sleep(seconds)
  return {
    status = 200,
    headers = { ["content-type"] = "text/plain; charset=utf-8" },
    body = string.format("slept %.3fs (CPU used: %.6fs)\n", seconds, os.clock() - started),
  }
end
