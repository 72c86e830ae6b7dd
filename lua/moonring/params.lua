-- moonring.params{ max_form, max_file, max_files, tmpdir }: middleware that
-- decodes what a client sends as parameters. req.query from the query
-- string; req.form from an application/x-www-form-urlencoded body; for
-- multipart/form-data, text fields into req.form and file parts into
-- temporary files (req.files), which moonring.multipart owns and removes
-- when the request ends. Path parameters stay in req.params. Also
-- parse_query(s), the decoder, for handlers that want it without the
-- middleware.
local handler = require "moonring.handler"

local M = {}

local DEFAULTS = {
  max_form = 1024 * 1024,          -- bytes of urlencoded body, or of multipart text fields
  max_file = 10 * 1024 * 1024,     -- bytes per uploaded file
  max_files = 20,                  -- file parts per request
}

local byte_of = {}
for i = 0, 255 do byte_of[string.format("%02x", i)] = string.char(i); byte_of[string.format("%02X", i)] = string.char(i) end

-- "+" is a space, %XX a byte; nil, err for a "%" not followed by two hex
-- digits.
local function decode(s)
  if s:find("+", 1, true) then s = s:gsub("+", " ") end
  if not s:find("%", 1, true) then return s end
  if s:gsub("%%%x%x", ""):find("%", 1, true) then
    return nil, "invalid percent-encoding"
  end
  return (s:gsub("%%(%x%x)", function(h) return byte_of[h] or byte_of[h:lower()] end))
end
M.decode = decode

-- Adds value under key: a repeated key becomes an array, in order.
local function add(t, key, value)
  local old = t[key]
  if old == nil then
    t[key] = value
  elseif type(old) == "table" then
    old[#old + 1] = value
  else
    t[key] = { old, value }
  end
end
M.add = add

-- parse_query(s) → table, or nil, err. "a=1&a=2&b=x+y" → { a = {"1","2"},
-- b = "x y" }. "a=" and a bare "a" both give "" ; empty pairs ("a=1&&b")
-- and pairs with an empty name ("=x") are skipped; "a[]=1" is the plain key
-- "a[]". Only "&" separates pairs.
function M.parse_query(s)
  if s == nil then return {} end
  if type(s) ~= "string" then
    error("moonring.parse_query: expected a string, got " .. type(s), 2)
  end
  local t = {}
  for pair in s:gmatch("[^&]+") do
    local eq = pair:find("=", 1, true)
    local k, v
    if eq then
      k, v = pair:sub(1, eq - 1), pair:sub(eq + 1)
    else
      k, v = pair, ""
    end
    if k ~= "" then
      local dk, err = decode(k)
      if not dk then return nil, err .. " in name " .. string.format("%q", k:sub(1, 40)) end
      local dv, err2 = decode(v)
      if not dv then return nil, err2 .. " in value of " .. string.format("%q", dk:sub(1, 40)) end
      if dk ~= "" then add(t, dk, dv) end
    end
  end
  return t
end

local function plain(status, text)
  return {
    status = status,
    headers = { ["content-type"] = "text/plain; charset=utf-8" },
    body = text .. "\n",
  }
end
M.plain = plain

-- The body as one string, at most `max` bytes: nil, response when over
-- (413) or when the client left (the error is raised again).
local function read_form_body(req, max)
  local parts, n = {}, 0
  while true do
    local chunk, err = req.body:read()
    if chunk == nil then
      if err then error(err, 0) end          -- "cancelled" / "closed": the client left
      break
    end
    n = n + #chunk
    if n > max then return nil, plain(413, "Payload Too Large: form over " .. max .. " bytes") end
    parts[#parts + 1] = chunk
  end
  return table.concat(parts)
end

-- "Multipart/Form-Data; Boundary=x" → "multipart/form-data", rest.
local function media_type(req)
  local ct = req.headers["content-type"]
  if not ct then return nil end
  local mt, rest = ct:match("^%s*([^;%s]+)%s*(.*)$")
  return mt and mt:lower(), rest
end

local function check_count(opts, name)
  local v = opts[name]
  if v == nil then return DEFAULTS[name] end
  if type(v) ~= "number" or v < 0 or v % 1 ~= 0 then
    error("moonring.params: " .. name .. " must be a whole number >= 0, got " .. tostring(v), 3)
  end
  return v
end

local KNOWN = { max_form = true, max_file = true, max_files = true, tmpdir = true }

-- Requests already decoded by an outer moonring.params (a body is read
-- once): an inner one leaves them as they are.
local decoded = setmetatable({}, { __mode = "k" })

-- The request phase: sets req.query, req.form, req.files, or answers 400
-- or 413.
local function on_request(cfg, req)
  if decoded[req] then return req end
  decoded[req] = true
  local query, err = M.parse_query(req.query_string)
  if not query then return req, plain(400, "Bad Request: query string: " .. err) end
  req.query = query
  req.form, req.files = {}, {}
  if not req.body then return req end
  local mt, rest = media_type(req)
  if mt == "application/x-www-form-urlencoded" then
    local body, over = read_form_body(req, cfg.max_form)
    if not body then return req, over end
    local form, ferr = M.parse_query(body)
    if not form then return req, plain(400, "Bad Request: form body: " .. ferr) end
    req.form = form
  elseif mt == "multipart/form-data" then
    local early = require("moonring.multipart").parse(req, rest, cfg)
    if early then return req, early end
  end
  return req
end

-- params{ ... } → function(handler) → handler of the same shape.
function M.params(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error("moonring.params: expected an options table or nil, got " .. type(opts), 2)
  end
  for k in pairs(opts) do
    if not KNOWN[k] then error("moonring.params: unknown option " .. tostring(k), 2) end
  end
  local tmpdir = opts.tmpdir
  if tmpdir ~= nil and (type(tmpdir) ~= "string" or tmpdir == "") then
    error("moonring.params: tmpdir must be a directory path (string)", 2)
  end
  local cfg = {
    max_form = check_count(opts, "max_form"),
    max_file = check_count(opts, "max_file"),
    max_files = check_count(opts, "max_files"),
    tmpdir = tmpdir,
  }
  return handler.middleware {
    request = function(req) return on_request(cfg, req) end,
  }
end

return setmetatable(M, { __call = function(_, opts) return M.params(opts) end })
