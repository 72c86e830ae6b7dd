-- GET /hello?name=you
local version = require "_lib.version"

return function(req)
  local name = (req.query_string or ""):match("name=([%w_%-]+)") or "world"
  return {
    status = 200,
    headers = { ["content-type"] = "text/plain; charset=utf-8" },
    body = string.format("%s, %s! (%s)\n", version.greeting, name, version.name),
  }
end
