-- moonring's small helpers (issue 10, item 8): response builders
--   redirect(url [, status]), html(s [, status [, headers]]), text(...)
-- and middleware
--   etag{ weak }                conditional GET for string bodies (304)
--   security_headers{ ... }     nosniff, frame options, referrer policy, HSTS
--   proxy_headers{ trusted }    X-Forwarded-For/-Proto from listed proxies
--   charset{ charset }          "; charset=utf-8" on text/* without one
-- Middleware never changes a response table it was given: a handler may
-- return the same table every time, so a changed response is a copy.
local handler = require "moonring.handler"

local M = {}

local mtype = math.type

---------------------------------------------------------------------------
-- Response builders
---------------------------------------------------------------------------

local function check_status(name, status, lo, hi, level)
  if status ~= nil and (mtype(status) ~= "integer" or status < lo or status > hi) then
    error(string.format("moonring.%s: status must be an integer %d-%d, got %s",
      name, lo, hi, tostring(status)), level + 1)
  end
end

local function typed(name, ctype, body, status, headers)
  check_status(name, status, 200, 599, 3)
  if body == nil then
    error("moonring." .. name .. ": expected a body (a string or another body kind), got nil", 3)
  end
  if type(body) == "number" then body = tostring(body) end
  if headers ~= nil and type(headers) ~= "table" then
    error("moonring." .. name .. ": headers must be a table, got " .. type(headers), 3)
  end
  local h = {}
  local has_type = false
  for k, v in pairs(headers or {}) do
    h[k] = v
    if type(k) == "string" and k:lower() == "content-type" then has_type = true end
  end
  if not has_type then h["content-type"] = ctype end
  return { status = status or 200, headers = h, body = body }
end

-- html(s [, status [, headers]]) → a text/html; charset=utf-8 response.
function M.html(body, status, headers)
  return typed("html", "text/html; charset=utf-8", body, status, headers)
end

-- text(s [, status [, headers]]) → a text/plain; charset=utf-8 response.
function M.text(body, status, headers)
  return typed("text", "text/plain; charset=utf-8", body, status, headers)
end

-- redirect(url [, status = 302]) → a response with Location and no body.
function M.redirect(url, status)
  if type(url) ~= "string" or url == "" then
    error("moonring.redirect: expected a URL (a non-empty string), got " .. tostring(url), 2)
  end
  if url:find("[%c]") then
    error("moonring.redirect: the URL must not contain control characters", 2)
  end
  check_status("redirect", status, 300, 399, 2)
  return { status = status or 302, headers = { location = url }, body = "" }
end

---------------------------------------------------------------------------
-- Header utilities
---------------------------------------------------------------------------

-- The key under which `name` (lower case) is set in headers, or nil.
local function header_key(headers, name)
  if headers == nil then return nil end
  if headers[name] ~= nil then return name end
  for k in pairs(headers) do
    if type(k) == "string" and k:lower() == name then return k end
  end
  return nil
end

-- A copy of res with a copy of its headers: safe to change.
local function copy_response(res)
  local out = {}
  for k, v in pairs(res) do out[k] = v end
  local h = {}
  for k, v in pairs(res.headers or {}) do h[k] = v end
  out.headers = h
  return out
end

local function first_value(v)
  if type(v) == "table" then return v[1] end
  return v
end

local function check_opts(name, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("moonring." .. name .. ": expected an options table or nil, got " .. type(opts), 3)
  end
  return opts or {}
end

---------------------------------------------------------------------------
-- etag
---------------------------------------------------------------------------

local unpack, byte = string.unpack, string.byte
local MUL = -7046029254386353131            -- 0x9E3779B97F4A7C15 as a signed integer

-- A 64-bit hash of s, in pure Lua: 64 bytes per string.unpack call,
-- a multiply and a shift per word (~250 MB/s; 4 KiB in ~16 µs). Not
-- cryptographic: an ETag needs change detection, not secrecy.
local function hash(s)
  local n = #s
  local h = 0x2545F4914F6CDD1D ~ n
  local i = 1
  while i <= n - 63 do
    local a, b, c, d, e, f, g, k = unpack("<i8i8i8i8i8i8i8i8", s, i)
    h = (h ~ a) * MUL; h = h ~ (h >> 31)
    h = (h ~ b) * MUL; h = h ~ (h >> 31)
    h = (h ~ c) * MUL; h = h ~ (h >> 31)
    h = (h ~ d) * MUL; h = h ~ (h >> 31)
    h = (h ~ e) * MUL; h = h ~ (h >> 31)
    h = (h ~ f) * MUL; h = h ~ (h >> 31)
    h = (h ~ g) * MUL; h = h ~ (h >> 31)
    h = (h ~ k) * MUL; h = h ~ (h >> 31)
    i = i + 64
  end
  while i <= n - 7 do
    h = (h ~ unpack("<i8", s, i)) * MUL; h = h ~ (h >> 31)
    i = i + 8
  end
  while i <= n do
    h = (h ~ byte(s, i)) * 0x100000001b3
    i = i + 1
  end
  h = (h ~ (h >> 29)) * MUL
  return h ~ (h >> 32)
end
M.hash = hash

-- The opaque part of an entity tag (without W/), or nil.
local function opaque(tag)
  return tag:match('^%s*W/(".*")%s*$') or tag:match('^%s*(".*")%s*$')
end

-- If-None-Match against etag, by weak comparison (RFC 9110 13.1.2): `*`,
-- or any tag of the list whose opaque part equals etag's.
local function none_match(header, etag)
  if header:match("^%s*%*%s*$") then return true end
  local want = opaque(etag)
  if not want then return false end
  for tag in header:gmatch('W?/?"[^"]*"') do
    if opaque(tag) == want then return true end
  end
  return false
end

-- What a 304 keeps: everything but the body and its length and type.
local function not_modified(res)
  local out = copy_response(res)
  out.status, out.body = 304, nil
  local h = out.headers
  for k in pairs(res.headers or {}) do
    local l = type(k) == "string" and k:lower()
    if l == "content-length" or l == "content-type" or l == "transfer-encoding" then h[k] = nil end
  end
  return out
end

-- etag{ weak = false } → middleware: a 200 answer to GET or HEAD with a
-- string body and no ETag gets one (a hash of the body, W/ if weak); a
-- request whose If-None-Match matches the ETag (the handler's own too)
-- is answered 304 without a body.
function M.etag(opts)
  opts = check_opts("etag", opts)
  if opts.weak ~= nil and type(opts.weak) ~= "boolean" then
    error("moonring.etag: weak must be a boolean, got " .. type(opts.weak), 2)
  end
  local prefix = opts.weak and 'W/"' or '"'
  return handler.middleware {
    response = function(res, req)
      local method = req.request_method
      if type(res) ~= "table" or (method ~= "GET" and method ~= "HEAD") then return res end
      if (res.status or 200) ~= 200 then return res end
      local key = header_key(res.headers, "etag")
      local tag = key and first_value(res.headers[key])
      if not tag then
        if type(res.body) ~= "string" then return res end
        tag = string.format('%s%x-%016x"', prefix, #res.body, hash(res.body))
        res = copy_response(res)
        res.headers.etag = tag
      end
      local inm = req.headers["if-none-match"]
      if inm and type(tag) == "string" and none_match(inm, tag) then return not_modified(res) end
      return res
    end,
  }
end

---------------------------------------------------------------------------
-- security_headers
---------------------------------------------------------------------------

local HSTS_DEFAULT = "max-age=31536000; includeSubDomains"

-- v for an error message, on one line.
local function shown(v)
  if type(v) ~= "string" then return tostring(v) end
  return '"' .. v:gsub("%c", function(c) return string.format("\\%d", c:byte()) end) .. '"'
end

local function header_option(opts, name, default)
  local v = opts[name]
  if v == nil then return default end
  if v == false then return nil end
  if type(v) ~= "string" or v == "" or v:find("[%c]") then
    error("moonring.security_headers: " .. name .. " must be a header value (string, no control "
      .. "characters) or false, got " .. shown(v), 3)
  end
  return v
end

-- security_headers{ frame_options = "SAMEORIGIN", content_type_options =
-- "nosniff", referrer_policy = "strict-origin-when-cross-origin", hsts =
-- false } → middleware adding those headers to every response that does
-- not set them itself. false leaves one out. hsts = true (max-age one
-- year, includeSubDomains), a number of seconds, or a string; it is sent
-- only on https requests (req.scheme, see proxy_headers).
function M.security_headers(opts)
  opts = check_opts("security_headers", opts)
  local add = {}
  local function put(name, v) if v then add[#add + 1] = { name, v } end end
  put("x-frame-options", header_option(opts, "frame_options", "SAMEORIGIN"))
  put("x-content-type-options", header_option(opts, "content_type_options", "nosniff"))
  put("referrer-policy", header_option(opts, "referrer_policy", "strict-origin-when-cross-origin"))
  local hsts = opts.hsts
  if hsts == true then
    hsts = HSTS_DEFAULT
  elseif mtype(hsts) == "integer" and hsts >= 0 then
    hsts = "max-age=" .. hsts
  elseif hsts ~= nil and hsts ~= false and (type(hsts) ~= "string" or hsts:find("[%c]")) then
    error("moonring.security_headers: hsts must be false, true, a whole number of seconds or a "
      .. "header value (string, no control characters), got " .. shown(hsts), 2)
  end
  hsts = hsts or nil
  return handler.middleware {
    response = function(res, req)
      if type(res) ~= "table" then return res end
      local out
      local function set(name, v)
        if header_key(res.headers, name) then return end
        out = out or copy_response(res)
        out.headers[name] = v
      end
      for _, nv in ipairs(add) do set(nv[1], nv[2]) end
      if hsts and req.scheme == "https" then set("strict-transport-security", hsts) end
      return out or res
    end,
  }
end

---------------------------------------------------------------------------
-- proxy_headers
---------------------------------------------------------------------------

local function ipv4_number(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
  if a > 255 or b > 255 or c > 255 or d > 255 then return nil end
  return ((a * 256 + b) * 256 + c) * 256 + d
end

local function is_ipv6(s)
  return #s >= 2 and #s <= 45 and s:find(":", 1, true) ~= nil and s:match("^[%x:.]+$") ~= nil
end

-- An address as a client could be known by: IPv4 or IPv6 text, a port
-- (1.2.3.4:80, [::1]:80) taken off. nil when it is neither.
local function address(s)
  s = s:match("^%s*(.-)%s*$")
  local v6 = s:match("^%[([%x:.]+)%]:?%d*$")
  if v6 then s = v6 end
  local v4 = s:match("^(%d+%.%d+%.%d+%.%d+):%d+$")
  if v4 then s = v4 end
  if ipv4_number(s) or is_ipv6(s) then return s:lower() end
  return nil
end

-- trusted list → function(addr) → bool. Entries: an address, or an IPv4
-- network in CIDR form ("10.0.0.0/8").
local function trust_test(list)
  local exact, nets = {}, {}
  for i, entry in ipairs(list) do
    if type(entry) ~= "string" then
      error("moonring.proxy_headers: trusted[" .. i .. "] must be a string, got " .. type(entry), 3)
    end
    local net, bits = entry:match("^([%d.]+)/(%d+)$")
    if net then
      local n, b = ipv4_number(net), tonumber(bits)
      if not n or b > 32 then
        error("moonring.proxy_headers: trusted[" .. i .. "] is not an IPv4 network: " .. entry, 3)
      end
      local size = 1 << (32 - b)
      nets[#nets + 1] = { n - n % size, size }
    else
      local a = address(entry)
      if not a then
        error("moonring.proxy_headers: trusted[" .. i .. "] is not an IP address: " .. entry, 3)
      end
      exact[a] = true
    end
  end
  return function(addr)
    if not addr then return false end
    addr = addr:lower()
    if exact[addr] then return true end
    local n = ipv4_number(addr:match("^::ffff:([%d.]+)$") or addr)
    if not n then return false end
    for _, net in ipairs(nets) do
      if n >= net[1] and n < net[1] + net[2] then return true end
    end
    return false
  end
end

local function split_list(s)
  local out = {}
  for item in s:gmatch("[^,]+") do
    item = item:match("^%s*(.-)%s*$")
    if item ~= "" then out[#out + 1] = item end
  end
  return out
end

-- proxy_headers{ trusted = { "127.0.0.1", "::1" } } → middleware: when
-- the peer (req.remote_addr) is a trusted proxy, req.remote_addr becomes
-- the right-most X-Forwarded-For entry that is not a trusted proxy (the
-- left-most when all are), and req.scheme the right-most X-Forwarded-Proto
-- value when it is http or https. An entry that is not an IP address
-- stops the walk (the address stays the last trusted hop). Other peers'
-- headers are ignored. The peer's own address is kept in req.proxy_addr.
function M.proxy_headers(opts)
  opts = check_opts("proxy_headers", opts)
  local list = opts.trusted or { "127.0.0.1", "::1" }
  if type(list) ~= "table" then
    error("moonring.proxy_headers: trusted must be a list of addresses, got " .. type(list), 2)
  end
  local trusted = trust_test(list)
  return handler.middleware {
    request = function(req)
      local peer = req.remote_addr
      if not trusted(peer) then return req end
      local headers = req.headers
      local xff = headers["x-forwarded-for"]
      if xff then
        local hops = split_list(xff)
        local client = peer
        for i = #hops, 1, -1 do
          local a = address(hops[i])
          if not a then break end
          client = a
          if not trusted(a) then break end
        end
        if client ~= peer then
          req.proxy_addr = peer
          req.remote_addr = client
        end
      end
      local xfp = headers["x-forwarded-proto"]
      if xfp then
        local protos = split_list(xfp)
        local p = protos[#protos] and protos[#protos]:lower()
        if p == "http" or p == "https" then req.scheme = p end
      end
      return req
    end,
  }
end

---------------------------------------------------------------------------
-- charset
---------------------------------------------------------------------------

-- charset{ charset = "utf-8" } → middleware: a text/* content-type
-- without a charset parameter gets "; charset=<charset>".
function M.charset(opts)
  opts = check_opts("charset", opts)
  local cs = opts.charset or "utf-8"
  if type(cs) ~= "string" or not cs:match("^[%w!#$%%&'+%-.^_`{}~]+$") then
    error("moonring.charset: charset must be a charset name (string), got " .. tostring(cs), 2)
  end
  local suffix = "; charset=" .. cs
  return handler.middleware {
    response = function(res)
      if type(res) ~= "table" then return res end
      local key = header_key(res.headers, "content-type")
      local ct = key and res.headers[key]
      if type(ct) ~= "string" or not ct:lower():match("^%s*text/") then return res end
      if ct:lower():find(";%s*charset%s*=") then return res end
      res = copy_response(res)
      res.headers[key] = ct .. suffix
      return res
    end,
  }
end

return M
