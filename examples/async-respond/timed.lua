-- GET /timed?delay=0.1[&fail=1] — moonring.middleware around an async
-- handler: `request` notes the start, `response` adds an x-response-time
-- header, `error` turns a raised error into a 502 JSON answer (which still
-- goes through `response`). The wrapped handler keeps its async shape.
local moonring = require "moonring"
local util = require "_lib.util"

local timing = moonring.middleware {
  request = function(req)
    req.started = moonring.now()     -- returning nil passes req on as it is
  end,
  response = function(res, req)
    res.headers = res.headers or {}
    res.headers["x-response-time"] =
      string.format("%.1fms", (moonring.now() - req.started) * 1000)
  end,
  error = function(err, req)
    return util.json(502, { error = tostring(err) })
  end,
}

return timing(function(req, respond, raise)
  local q = util.query(req)
  moonring.spawn(function()
    local data, err = util.upstream("prices", util.seconds(q.delay, 0.1), q.fail)
    if not data then return raise(err) end
    respond(util.json(200, data))
  end)
end)
