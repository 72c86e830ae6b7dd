-- Wraps the routes under users/: runs the handler through moonring.call.
local moonring = require "moonring"

return function(handler)
  return function(req)
    local res = moonring.call(handler, req)
    res.headers = res.headers or {}
    res.headers["x-fuzz"] = "1"
    return res
  end
end
