-- /slow?s=0.5 — waits without blocking anyone else: moonring.sleep parks
-- this request's coroutine, and the loop serves other clients meanwhile.
-- The query string is decoded by moonring.parse_query, so ?class=2&s=0.2
-- sleeps 0.2 s (s is its own parameter, not the tail of "class").
local moonring = require "moonring"

local function text(status, body)
  return { status = status, headers = { ["content-type"] = "text/plain; charset=utf-8" }, body = body }
end

return function(req)
  local query, err = moonring.parse_query(req.query_string)
  if not query then return text(400, "Bad Request: " .. err .. "\n") end
  local s = query.s
  if type(s) == "table" then s = s[1] end          -- ?s=1&s=2: the first
  local seconds = tonumber(s) or 0.5
  seconds = math.max(0, math.min(seconds, 10))
  local started = os.clock()
  moonring.sleep(seconds)
  return text(200, string.format("slept %.3fs (CPU used: %.6fs)\n", seconds, os.clock() - started))
end
