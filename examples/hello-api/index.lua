-- GET / — what this app serves, from moonring.routes().
local moonring = require "moonring"
local api = require "_lib.api"

return {
  GET = function(req)
    local routes = {}
    for i, r in ipairs(moonring.routes()) do
      routes[i] = { path = r.path, methods = r.methods or { "any" } }
    end
    return api.json(200, nil, string.format('{"server":"moonring %s","routes":%s}',
      moonring.version, api.array(routes)))
  end,
}
