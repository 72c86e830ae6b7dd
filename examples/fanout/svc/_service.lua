-- A pretend upstream service: answers after `delay` seconds (its own
-- default, or ?delay= on the call, capped at 5), or hangs for ?hang=1.
local moonring = require "moonring"
local cjson = require "cjson"
local query = require "_lib.query"

return function(name, default_delay, payload)
  return function(req)
    local q = query(req)
    local delay = math.min(tonumber(q.delay) or default_delay, 5)
    moonring.sleep(q.hang == "1" and 3600 or delay)
    return { status = 200, headers = { ["content-type"] = "application/json" },
             body = cjson.encode({ service = name, data = payload }) }
  end
end
