-- Shared helpers for the route files. Files and directories starting with "_"
-- are not routes; the app directory is on package.path, so route files load
-- this with require "_lib.api". Modules are loaded once per server, so the
-- `notes` store below is shared by every request (one worker, no locks).
local cjson = require "cjson"

local api = { notes = {}, next_id = 1 }

-- A JSON response. `raw` is already-encoded JSON (for arrays, see below).
function api.json(status, value, raw)
  return {
    status = status,
    headers = { ["content-type"] = "application/json" },
    body = (raw or cjson.encode(value)) .. "\n",
  }
end

function api.error(status, message)
  return api.json(status, { error = message })
end

-- cjson encodes an empty table as {}; build arrays by hand so [] stays [].
function api.array(values)
  local parts = {}
  for i, v in ipairs(values) do parts[i] = cjson.encode(v) end
  return "[" .. table.concat(parts, ",") .. "]"
end

-- The request body decoded as a JSON object, or nil and an error response.
function api.read_json(req)
  local ctype = req.headers["content-type"] or ""
  if not ctype:find("^application/json") then
    return nil, api.error(415, "send content-type: application/json")
  end
  local text = req.body and req.body:read("a") or ""
  local ok, value = pcall(cjson.decode, text)
  if not ok or type(value) ~= "table" then
    return nil, api.error(400, "body must be a JSON object")
  end
  return value
end

return api
