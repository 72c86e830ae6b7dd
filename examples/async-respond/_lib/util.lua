-- Shared by the routes (not a route itself: its name starts with "_").
-- JSON answers, query parameters, and a pretend upstream service.
local moonring = require "moonring"
local cjson = require "cjson"

local util = {}

function util.json(status, value)
  return {
    status = status,
    headers = { ["content-type"] = "application/json" },
    body = cjson.encode(value) .. "\n",
  }
end

-- req.query_string as a table: "a=1&b=x" → { a = "1", b = "x" }.
function util.query(req)
  local q = {}
  for k, v in (req.query_string or ""):gmatch("([^&=]+)=?([^&]*)") do q[k] = v end
  return q
end

-- A number of seconds from the query, between 0 and 5, or `default`.
function util.seconds(value, default)
  local n = tonumber(value)
  if not n or n ~= n then return default end
  return math.max(0, math.min(n, 5))
end

-- A pretend upstream: answers after `delay` seconds, or fails if `fail`.
-- Like any outbound call it only parks the calling task. Returns a table,
-- or nil and a message (Lua style); a cancelled caller gets "cancelled"
-- raised out of the sleep, which ends its task quietly.
function util.upstream(name, delay, fail)
  moonring.sleep(delay)
  if fail then return nil, name .. " answered 503" end
  return { upstream = name, took = delay, answer = 42 }
end

return util
