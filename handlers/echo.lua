-- /echo — answers with the request table as JSON (any method; a body is
-- read in full and echoed as a string).
local cjson = require "cjson"

return function(req)
  local copy = {}
  for k, v in pairs(req) do
    if k ~= "body" then copy[k] = v end
  end
  if req.body then copy.body = req.body:read("a") end
  return {
    status = 200,
    headers = { ["content-type"] = "application/json" },
    body = cjson.encode(copy) .. "\n",
  }
end
