-- moonring.cookies{}: middleware for HTTP cookies (RFC 6265). On the way in,
-- req.cookies from the cookie header (never an error: bad pairs are
-- skipped); on the way out, a response's `cookies = { name = value or spec }`
-- becomes set-cookie header lines, added to any the handler set itself. An
-- invalid name, value or attribute is the handler's mistake: it raises (a
-- 500, the message logged). parse and serialize are exported for the
-- session module and for handlers that manage headers themselves.
local handler = require "moonring.handler"

local M = {}

-- token (RFC 7230): visible ASCII without separators.
local function is_token(s)
  return type(s) == "string" and s ~= "" and not s:find("[^!#$%%&'*+%-.^_`|~%w]")
end

-- cookie-octet: visible ASCII except DQUOTE, comma, semicolon, backslash;
-- the whole value may be in double quotes.
local function is_cookie_value(s)
  if type(s) ~= "string" then return false end
  local inner = s:match('^"(.*)"$') or s
  return not inner:find('[%c %",;\\\128-\255]')
end

-- parse(header) → { name = value }: pairs split on ";", names that are not
-- tokens and pairs without "=" skipped, quoted values unquoted, the first of
-- a repeated name kept. Values are as sent (no percent-decoding).
function M.parse(header)
  local t = {}
  if type(header) ~= "string" then return t end
  for pair in header:gmatch("[^;]+") do
    local name, value = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
    if name and is_token(name) and t[name] == nil then
      t[name] = value:match('^"(.*)"$') or value
    end
  end
  return t
end

local SAME_SITE = { lax = "Lax", strict = "Strict", none = "None" }

local function bad(name, what)
  error("moonring.cookies: cookie " .. string.format("%q", tostring(name)) .. ": " .. what, 0)
end

-- An attribute value must not end the attribute or the header line.
local function check_attr(name, key, v)
  if type(v) ~= "string" or v == "" or v:find("[%c;]") then
    bad(name, key .. " must be a non-empty string without ';' or control characters")
  end
  return v
end

local function http_date(t)
  return os.date("!%a, %d %b %Y %H:%M:%S GMT", math.floor(t))
end

local ATTRS = {
  value = true, path = true, domain = true, max_age = true, expires = true,
  secure = true, http_only = true, same_site = true,
}

-- serialize(name, spec) → the set-cookie value. spec: the value (string),
-- or { value =, path = "/" by default (false: none), domain =, max_age =
-- seconds, expires = epoch seconds or a date string, secure =, http_only =,
-- same_site = "Lax"|"Strict"|"None" }. Raises on anything invalid.
function M.serialize(name, spec)
  if not is_token(name) then bad(name, "the name must be a token (letters, digits, !#$%&'*+-.^_`|~)") end
  if type(spec) == "string" then spec = { value = spec } end
  if type(spec) ~= "table" then bad(name, "expected a string value or a table, got " .. type(spec)) end
  for k in pairs(spec) do
    if not ATTRS[k] then bad(name, "unknown attribute " .. tostring(k)) end
  end
  local value = spec.value
  if value == nil then value = "" end
  if not is_cookie_value(value) then
    bad(name, "the value must be a string of cookie-octets (no space, '\"', ',', ';', '\\' or control"
      .. " characters: encode it, e.g. base64url)")
  end
  local out = { name .. "=" .. value }
  local path = spec.path
  if path == nil then path = "/" end
  if path ~= false then out[#out + 1] = "Path=" .. check_attr(name, "path", path) end
  if spec.domain ~= nil then
    local d = check_attr(name, "domain", spec.domain)
    if d:find("[^%w%.%-]") then bad(name, "domain must be a host name") end
    out[#out + 1] = "Domain=" .. d
  end
  if spec.max_age ~= nil then
    local n = spec.max_age
    if math.type(n) == "float" and n % 1 == 0 then n = math.tointeger(n) end
    if math.type(n) ~= "integer" then bad(name, "max_age must be a whole number of seconds") end
    out[#out + 1] = "Max-Age=" .. n
  end
  if spec.expires ~= nil then
    local e = spec.expires
    if type(e) == "number" then
      if e ~= e or e == math.huge or e == -math.huge then bad(name, "expires must be a finite number") end
      e = http_date(e)
    else
      e = check_attr(name, "expires", e)
    end
    out[#out + 1] = "Expires=" .. e
  end
  for _, flag in ipairs { "secure", "http_only" } do
    local v = spec[flag]
    if v ~= nil and type(v) ~= "boolean" then bad(name, flag .. " must be a boolean") end
  end
  if spec.secure then out[#out + 1] = "Secure" end
  if spec.http_only then out[#out + 1] = "HttpOnly" end
  if spec.same_site ~= nil then
    local s = type(spec.same_site) == "string" and SAME_SITE[spec.same_site:lower()]
    if not s then bad(name, "same_site must be \"Lax\", \"Strict\" or \"None\"") end
    if s == "None" and not spec.secure then bad(name, "same_site = \"None\" needs secure = true") end
    out[#out + 1] = "SameSite=" .. s
  end
  return table.concat(out, "; ")
end

-- The response's cookies as set-cookie lines (names in sorted order, after
-- the handler's own set-cookie lines); res.cookies is consumed.
local function write_cookies(res)
  if type(res) ~= "table" or res.cookies == nil then return end
  local cookies = res.cookies
  if type(cookies) ~= "table" then
    error("moonring.cookies: response cookies must be a table, got " .. type(cookies), 0)
  end
  local names = {}
  for name in pairs(cookies) do
    if type(name) ~= "string" then bad(name, "cookie names must be strings") end
    names[#names + 1] = name
  end
  table.sort(names)
  local headers = res.headers
  if headers == nil then headers = {}; res.headers = headers end
  local key = "set-cookie"
  for k in pairs(headers) do
    if type(k) == "string" and k:lower() == "set-cookie" then key = k break end
  end
  local lines = headers[key]
  if type(lines) == "string" then lines = { lines }
  elseif type(lines) == "table" then lines = { table.unpack(lines) }
  else lines = {} end
  for _, name in ipairs(names) do lines[#lines + 1] = M.serialize(name, cookies[name]) end
  if #lines > 0 then headers[key] = lines end
  res.cookies = nil
end
M.write = write_cookies

-- cookies{} → function(handler) → handler of the same shape. No options yet;
-- the table is accepted for symmetry with the other middleware.
function M.cookies(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("moonring.cookies: expected an options table or nil, got " .. type(opts), 2)
  end
  for k in pairs(opts or {}) do error("moonring.cookies: unknown option " .. tostring(k), 2) end
  return handler.middleware {
    request = function(req)
      req.cookies = M.parse(req.headers.cookie)
      return req
    end,
    response = function(res) write_cookies(res) return res end,
  }
end

return setmetatable(M, { __call = function(_, opts) return M.cookies(opts) end })
