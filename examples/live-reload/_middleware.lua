-- Wraps every route: counts requests in the state table and says which code
-- version answered. Middleware is reloaded with the routes.
local stats = require "_lib.stats"
local version = require "_lib.version"
local moonring = require "moonring"

return moonring.middleware {
  request = function(req)
    stats.requests = stats.requests + 1
    return req
  end,
  response = function(res)
    res.headers = res.headers or {}
    res.headers["x-code-version"] = version.name
    return res
  end,
}
