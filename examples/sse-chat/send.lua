-- POST /send — name and text, as a form or as JSON, go to everyone listening.
-- Answers 201 with the stored message; GET /send gets 405 (a method table).
local cjson = require "cjson"
local chat = require "_lib.chat"

local MAX_NAME, MAX_TEXT = 40, 1000

local function json(status, value)
  return {
    status = status,
    headers = { ["content-type"] = "application/json" },
    body = cjson.encode(value) .. "\n",
  }
end

local function urldecode(s)
  s = s:gsub("%+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The body as a table of fields, or nil and an error response.
local function fields(req)
  local ctype = (req.headers["content-type"] or ""):lower()
  local text = req.body and req.body:read("a") or ""
  if ctype:find("^application/json") then
    local ok, value = pcall(cjson.decode, text)
    if not ok or type(value) ~= "table" then
      return nil, json(400, { error = "body must be a JSON object" })
    end
    return value
  elseif ctype:find("^application/x%-www%-form%-urlencoded") then
    local out = {}
    for pair in text:gmatch("[^&]+") do
      local k, v = pair:match("^([^=]*)=?(.*)$")
      out[urldecode(k)] = urldecode(v)
    end
    return out
  end
  return nil, json(415, { error = "send a form or application/json" })
end

local function clean(v, max)
  if type(v) ~= "string" then return nil end
  v = v:gsub("^%s+", ""):gsub("%s+$", "")
  if v == "" or #v > max or not utf8.len(v) then return nil end
  return v
end

return {
  POST = function(req)
    local input, bad = fields(req)
    if not input then return bad end
    local name, text = clean(input.name, MAX_NAME), clean(input.text, MAX_TEXT)
    if not name or not text then
      return json(422, { error = string.format(
        "name (1-%d bytes) and text (1-%d bytes) are required, as UTF-8", MAX_NAME, MAX_TEXT) })
    end
    return json(201, chat.publish(name, text))
  end,
}
