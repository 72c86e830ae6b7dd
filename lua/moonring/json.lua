-- moonring.json: JSON responses and request bodies, on Debian's lua-cjson.
--   json(value [, status [, headers]]) → a response with application/json
--   array(t) → t, marked to encode as a JSON array even when empty
--   json_body{ max = bytes } → middleware setting req.json
--   encode(value) → text; decode(text) → value or nil, message; null
-- lua-cjson 2.1.0 encodes {} as {} and has no empty-array marker, prints
-- numbers with 14 significant digits and decodes every number as a float.
-- So values are walked once around cjson: a marked empty array, and a
-- number that 14 digits would not keep exactly, become a token string that
-- cjson escapes as "\u0000<key>...\u0000" and is replaced in the text
-- afterwards (the key is random per process, so no real string matches);
-- decoding turns `[]` into array{} and whole floats into integers. cjson
-- instances are private: an app's cjson settings do not change these.
local cjson = require "cjson"
local handler = require "moonring.handler"

local M = {}

local null = cjson.null
M.null = null                 -- JSON null, both ways (a key with null is not a missing key)

local MAX_DEPTH = 1000        -- cjson's own nesting limit, both ways
local DEFAULT_MAX = 1024 * 1024

local enc = cjson.new()
enc.encode_max_depth(MAX_DEPTH)
enc.encode_invalid_numbers(false)      -- NaN and inf raise: JSON has no such numbers

local dec = cjson.new()
dec.decode_max_depth(MAX_DEPTH)
dec.decode_invalid_numbers(false)      -- no NaN, Infinity, hex: strict JSON only

local KEY
do
  local chars = {}
  for i = 1, 16 do chars[i] = string.char(math.random(97, 122)) end
  KEY = table.concat(chars)
end
local EMPTY = "\0" .. KEY .. "\0"
local TOKEN = '"\\u0000' .. KEY .. '([^"\\]*)\\u0000"'

local arrays = setmetatable({}, { __mode = "k" })

-- array([t]) → t (a new table without t): encoded as a JSON array even
-- when empty. Non-empty tables with keys 1..n are arrays anyway.
function M.array(t)
  if t == nil then t = {} end
  if type(t) ~= "table" then
    error("moonring.array: expected a table, got " .. type(t), 2)
  end
  arrays[t] = true
  return t
end

---------------------------------------------------------------------------
-- Encoding
---------------------------------------------------------------------------

local tointeger, mtype, fmt = math.tointeger, math.type, string.format

-- The token for number n, or nil when cjson prints n exactly.
local function number_token(n)
  if mtype(n) == "integer" then
    if n > -1e14 and n < 1e14 then return nil end
    return "\0" .. KEY .. fmt("%d", n) .. "\0"
  end
  if n ~= n or n == math.huge or n == -math.huge then return nil end   -- cjson raises
  if tonumber(fmt("%.14g", n)) == n then return nil end
  return "\0" .. KEY .. fmt("%.17g", n) .. "\0"
end

-- prepare(v) → the value to give cjson (v itself when nothing changes)
-- and whether a token was put in. Tables are copied only when changed.
local function prepare(v, depth)
  local t = type(v)
  if t == "number" then
    local tok = number_token(v)
    if tok then return tok, true end
    return v, false
  end
  if t ~= "table" then return v, false end
  if depth > MAX_DEPTH then
    error("moonring.json: cannot encode a table nested deeper than " .. MAX_DEPTH
      .. " levels (a cycle?)", 0)
  end
  if next(v) == nil then
    if arrays[v] then return EMPTY, true end
    return v, false
  end
  local copy, any
  for k, x in next, v do
    local y, changed = prepare(x, depth + 1)
    if changed then
      if not copy then
        copy = {}
        for k2, x2 in next, v do copy[k2] = x2 end
      end
      copy[k] = y
      any = true
    end
  end
  return copy or v, any or false
end

local function untoken(text)
  return text == "" and "[]" or text
end

-- encode(value) → JSON text. Raises on what JSON cannot hold (functions,
-- NaN, cycles, excessively sparse arrays).
local function encode(value)
  local v, changed = prepare(value, 1)
  local ok, text = pcall(enc.encode, v)
  if not ok then error("moonring.json: cannot encode: " .. tostring(text), 3) end
  if changed then text = text:gsub(TOKEN, untoken) end
  return text
end
M.encode = encode

-- json(value [, status [, headers]]) → { status, headers, body }: the
-- headers are copied, with content-type application/json unless given.
function M.json(value, status, headers)
  if status ~= nil and (mtype(status) ~= "integer" or status < 200 or status > 599) then
    error("moonring.json: status must be an integer 200-599, got " .. tostring(status), 2)
  end
  if headers ~= nil and type(headers) ~= "table" then
    error("moonring.json: headers must be a table, got " .. type(headers), 2)
  end
  local h = {}
  local typed = false
  if headers then
    for k, x in pairs(headers) do
      h[k] = x
      if type(k) == "string" and k:lower() == "content-type" then typed = true end
    end
  end
  if not typed then h["content-type"] = "application/json" end
  return { status = status or 200, headers = h, body = encode(value) }
end

---------------------------------------------------------------------------
-- Decoding
---------------------------------------------------------------------------

-- text with each `[ ]` outside strings replaced by the empty-array token.
local function mark_empty_arrays(text)
  if not text:find("%[%s*%]") then return text end
  local out, pos, n = {}, 1, 0
  local i = 1
  while true do
    local at = text:find('["%[]', i)
    if not at then break end
    if text:byte(at) == 34 then                 -- a string: skip to its end
      local j = at + 1
      while true do
        local q = text:find('["\\]', j)
        if not q then return text end           -- unterminated: cjson says so
        if text:byte(q) == 92 then j = q + 2 else i = q + 1 break end
      end
    else
      local _, e = text:find("^%[%s*%]", at)
      if e then
        n = n + 1
        out[n] = text:sub(pos, at - 1)
        n = n + 1
        out[n] = '"\\u0000' .. KEY .. '\\u0000"'
        pos = e + 1
        i = e + 1
      else
        i = at + 1
      end
    end
  end
  if n == 0 then return text end
  out[n + 1] = text:sub(pos)
  return table.concat(out)
end

local function settle(v)
  local t = type(v)
  if t == "number" then
    if v >= -9007199254740992 and v <= 9007199254740992 then return tointeger(v) or v end
    return v
  end
  if t == "string" then
    if v == EMPTY then return M.array {} end
    return v
  end
  if t == "table" then
    for k, x in next, v do
      local tx = type(x)
      if tx == "table" or tx == "number" or (tx == "string" and x == EMPTY) then
        v[k] = settle(x)
      end
    end
  end
  return v
end

-- decode(text) → value, or nil and a message. JSON null is json.null;
-- whole numbers are integers; an empty array is array{}.
function M.decode(text)
  if type(text) ~= "string" then
    error("moonring.json: decode expects a string, got " .. type(text), 2)
  end
  local ok, v = pcall(dec.decode, mark_empty_arrays(text))
  if not ok then return nil, tostring(v) end
  return settle(v)
end

---------------------------------------------------------------------------
-- json_body middleware
---------------------------------------------------------------------------

local function refuse(status, msg)
  return {
    status = status,
    headers = { ["content-type"] = "text/plain; charset=utf-8" },
    body = msg .. "\n",
  }
end

-- true for application/json and application/*+json, with no charset or
-- charset=utf-8 (JSON is UTF-8: RFC 8259).
local function is_json_type(ct)
  if not ct then return false end
  local media, params = ct:match("^%s*([^;]-)%s*(;.*)$")
  if not media then media, params = ct:match("^%s*(.-)%s*$"), "" end
  media = media:lower()
  if media ~= "application/json" and not media:match("^application/[%w!#$&%-^_.]+%+json$") then
    return false
  end
  local charset = params:lower():match(";%s*charset%s*=%s*\"?([^;\"%s]*)")
  return charset == nil or charset == "utf-8" or charset == "utf8"
end

-- A reader over the text already read, so a handler may still read req.body.
local Replay = {}
Replay.__index = Replay
function Replay:read(how)
  local s = self.text
  self.text = nil
  if how ~= nil then return s or "" end
  if s == "" then return nil end
  return s
end

-- The body as one string, or nil and a response (413, or 400 when cut).
local function read_body(req, max)
  local len = tonumber(req.headers["content-length"] or "")
  if len and len > max then
    return nil, refuse(413, "Payload Too Large: the JSON body is over " .. max .. " bytes")
  end
  local parts, size = {}, 0
  while true do
    local chunk, err = req.body:read()
    if chunk == nil then
      if err == "cancelled" then error(err, 0) end
      if err then return nil, refuse(400, "Bad Request: the body was cut short") end
      break
    end
    size = size + #chunk
    if size > max then
      return nil, refuse(413, "Payload Too Large: the JSON body is over " .. max .. " bytes")
    end
    parts[#parts + 1] = chunk
  end
  return table.concat(parts)
end

-- json_body{ max = bytes (default 1 MiB), strict = true } → middleware: a
-- request with a JSON body gets req.json (the decoded value); one without
-- a body gets req.json = nil. 415 for a body of another type (with strict
-- = false it passes on untouched, req.json = nil: for routes that also
-- take forms), 413 over max, 400 for malformed JSON.
function M.json_body(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("moonring.json_body: expected an options table or nil, got " .. type(opts), 2)
  end
  local max = opts and opts.max or DEFAULT_MAX
  if mtype(max) ~= "integer" or max < 1 then
    error("moonring.json_body: max must be a whole number of bytes >= 1, got " .. tostring(max), 2)
  end
  local strict = true
  if opts and opts.strict ~= nil then
    if type(opts.strict) ~= "boolean" then
      error("moonring.json_body: strict must be a boolean, got " .. type(opts.strict), 2)
    end
    strict = opts.strict
  end
  return handler.middleware {
    request = function(req)
      req.json = nil
      if req.body == nil then return req end
      if not is_json_type(req.headers["content-type"]) then
        if not strict then return req end
        return req, refuse(415, "Unsupported Media Type: expected an application/json body")
      end
      local text, early = read_body(req, max)
      if not text then return req, early end
      req.body = setmetatable({ text = text }, Replay)
      if text == "" then return req end                  -- an empty body: no JSON
      local value, err = M.decode(text)
      if err then return req, refuse(400, "Bad Request: malformed JSON: " .. err) end
      req.json = value
      return req
    end,
  }
end

return M
