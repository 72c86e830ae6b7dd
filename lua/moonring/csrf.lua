-- moonring.csrf{ field = "_csrf", header = "x-csrf-token" }: anti-forgery
-- tokens, as middleware placed after moonring.session. Each session gets a
-- random token (kept in req.session._csrf, shown to handlers as
-- req.csrf_token, to be put in forms or sent by scripts as a header). A
-- request with an unsafe method (POST, PUT, PATCH, DELETE) must bring the
-- same token in the header or in the form field, or it is answered 403 and
-- never reaches the handler. Tokens are compared in constant time.
--
-- The form field is read from req.form when moonring.params ran before;
-- otherwise an application/x-www-form-urlencoded body is read and parsed
-- here (req.form is then set, and req.body replaced by a reader that gives
-- the same bytes again).
local core = require "moonring.core"
local handler = require "moonring.handler"

local M = {
  TOKEN_BYTES = 32,
  SESSION_KEY = "_csrf",
}

local UNSAFE = { POST = true, PUT = true, PATCH = true, DELETE = true }

local function forbidden(why)
  return {
    status = 403,
    headers = { ["content-type"] = "text/plain; charset=utf-8" },
    body = "Forbidden: " .. why .. "\n",
  }
end

local function check_options(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then error("moonring.csrf: expected an options table, got " .. type(opts), 3) end
  local o = { field = opts.field or "_csrf", header = opts.header or "x-csrf-token" }
  if type(o.field) ~= "string" or o.field == "" then error("moonring.csrf: field must be a non-empty string", 3) end
  if type(o.header) ~= "string" or not o.header:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
    error("moonring.csrf: header must be a header name", 3)
  end
  o.header = o.header:lower()
  return o
end

-- The session's token, made on first use.
local function session_token(session)
  local t = session[M.SESSION_KEY]
  if type(t) == "string" and #t >= 32 then return t end
  local bytes, err = core.random_bytes(M.TOKEN_BYTES)
  if not bytes then error("moonring.csrf: " .. err, 0) end
  t = core.b64url_encode(bytes)
  session[M.SESSION_KEY] = t
  return t
end

local function unhex(h) return string.char(tonumber(h, 16)) end

-- "a=1&b=x+y" → { a = "1", b = "x y" } (a repeated key: an array), or nil
-- for a bad %-escape. moonring.params' parser when it is there.
local function parse_form(s)
  local ok, params = pcall(require, "moonring.params")
  if ok and type(params) == "table" and params.parse_query then return params.parse_query(s) end
  local out = {}
  for pair in s:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    local bad = false
    local function dec(x)
      x = x:gsub("+", " ")
      if x:find("%%%X") or x:find("%%.%X") or x:find("%%.?$") then bad = true end
      return (x:gsub("%%(%x%x)", unhex))
    end
    k, v = dec(k), dec(v)
    if bad then return nil, "bad percent-encoding" end
    local old = out[k]
    if old == nil then out[k] = v
    elseif type(old) == "table" then old[#old + 1] = v
    else out[k] = { old, v } end
  end
  return out
end

-- A body reader that gives `data` again, for handlers after us.
local function replay(data)
  local done = false
  return {
    read = function(_, how)
      if done then return how == "a" and "" or nil end
      done = true
      return data
    end,
  }
end

-- The token the request brings: the header, else the form field; nil when
-- it brings none (or several).
local function sent_token(o, req)
  local h = req.headers and req.headers[o.header]
  if type(h) == "string" and h ~= "" then return h end
  local form = req.form
  if form == nil and req.body then
    local ctype = req.headers and req.headers["content-type"] or ""
    if ctype:lower():match("^%s*application/x%-www%-form%-urlencoded") then
      local data = req.body:read("a")
      if data == nil then return nil end
      req.body = replay(data)
      form = parse_form(data)
      req.form = form
    end
  end
  local v = type(form) == "table" and form[o.field]
  if type(v) == "string" then return v end
  return nil
end

local function csrf(opts)
  local o = check_options(opts)
  return function(inner)
    if type(inner) ~= "function" then
      error("moonring.csrf: expected a handler function, got " .. type(inner), 2)
    end
    return function(req)
      local session = req.session
      if type(session) ~= "table" then
        error("moonring.csrf: req.session is missing: put moonring.session{} before moonring.csrf{}", 0)
      end
      local token = session_token(session)
      req.csrf_token = token
      if UNSAFE[req.request_method] then
        local sent = sent_token(o, req)
        if not sent then return forbidden("missing CSRF token") end
        if not core.equal(sent, token) then return forbidden("invalid CSRF token") end
      end
      return handler.call(inner, req)
    end
  end
end

M.csrf = csrf
return setmetatable(M, { __call = function(_, opts) return csrf(opts) end })
