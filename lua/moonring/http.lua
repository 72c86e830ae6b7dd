-- require "moonring.http" (also moonring.http): an HTTP/1.1 client on
-- moonring's cosockets, plain HTTP only. Responses are parsed by llhttp in C
-- (core.http_parser, core/resparse.c); this file builds requests, moves
-- bytes, and owns the timeouts, the keep-alive pool and redirects.
--
--   local http = require "moonring.http"
--   local res, err = http.get("http://127.0.0.1:8081/users/1", { timeout = 2 })
--   -- res = { status = 200, headers = { ["content-type"] = ... }, body = "..." }
--
-- Ownership: each attempt owns one socket (a socket of the calling task,
-- closed when that task's request ends). It goes back to the per-worker pool
-- (key "host:port") once a response was read to its end and both sides allow
-- keep-alive, and is closed on anything else: an error, a timeout, a body
-- left unread. With stream = true the response's body iterator owns the
-- socket until the body ends, fails, or res:close() is called.
local core = require "moonring.core"

local http = {
  DEFAULT_TIMEOUT = 30,                -- s, the whole call (connect to last body byte)
  DEFAULT_CONNECT_TIMEOUT = 10,        -- s, each connect
  DEFAULT_MAX_BODY = 64 * 1024 * 1024, -- bytes, a buffered body (stream = true: none)
  DEFAULT_POOL_SIZE = 16,              -- idle connections kept per host:port
  KEEPALIVE_IDLE = 30,                 -- s, an idle pooled connection is closed after it
  USER_AGENT = "moonring/" .. core.version,
}

local READ_SIZE = 64 * 1024            -- bytes asked of the socket per read
local DRAIN_MAX = 64 * 1024            -- a redirect's body bigger than this closes its connection
local SEND_TOGETHER = 64 * 1024        -- bodies under this go in one send with the head

local HTTPS = "https is not supported (plain HTTP only)"

-- Methods a request may be repeated for when a reused connection turns out
-- to be dead (RFC 9110 §9.2.2, as Go's transport and Node's agent).
local IDEMPOTENT = { GET = true, HEAD = true, OPTIONS = true, PUT = true, DELETE = true, TRACE = true }
local KNOWN_METHOD = { GET = true, HEAD = true, POST = true, PUT = true, PATCH = true,
                       DELETE = true, OPTIONS = true, TRACE = true }
local REDIRECT = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }

---------------------------------------------------------------------------
-- URLs
---------------------------------------------------------------------------

-- Bytes a request target may carry as they are; others are percent-encoded.
local function encode_target(s)
  return (s:gsub("[^%w%-%._~:/?@!$&'()*+,;=%%]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

-- http://host[:port][/path][?query][#fragment] → { host =, port =,
-- authority =, path =, query = }, or nil, message. "userinfo" is returned
-- as the message for user@host, for the caller to decide.
local function parse_url(url)
  local scheme, rest = url:match("^(%a[%w+.%-]*)://(.*)$")
  if not scheme then return nil, "bad url (expected http://host[:port]/path): " .. url end
  scheme = scheme:lower()
  if scheme == "https" then return nil, HTTPS end
  if scheme ~= "http" then return nil, "bad url: scheme " .. scheme .. " (plain http only)" end
  rest = rest:gsub("#.*$", "")
  local authority, path, query = rest:match("^([^/?]*)([^?]*)(.*)$")
  if authority:find("@", 1, true) then return nil, "userinfo" end
  local host, port, connect_host
  if authority:sub(1, 1) == "[" then
    connect_host, port = authority:match("^%[([%x:.]+)%](.*)$")
    host = connect_host and "[" .. connect_host .. "]"
  else
    host, port = authority:match("^([%w%.%-_]+)(.*)$")
    connect_host = host
  end
  if not host then return nil, "bad url: host " .. string.format("%q", authority) end
  if port == "" or port == ":" then
    port = 80
  else
    port = port:match("^:(%d+)$")
    port = port and tonumber(port)
    if not port or port < 1 or port > 65535 then return nil, "bad url: port in " .. authority end
  end
  if path == "" then path = "/" end
  return {
    host = connect_host, port = port,
    key = connect_host .. ":" .. port,   -- the keep-alive pool's (as sock:connect names it)
    authority = port == 80 and host or host .. ":" .. port,
    path = encode_target(path), query = encode_target(query),
  }
end

-- Parsed URLs, by their text: a handler calls the same few upstreams again
-- and again. The tables are shared, so nothing may change them (resolve()
-- copies). Emptied when full.
local URL_CACHE_MAX = 256
local url_cache, url_cached = {}, 0

local function parse_url_cached(url)
  local u = url_cache[url]
  if u then return u end
  local err
  u, err = parse_url(url)
  if not u then return nil, err end
  if url_cached >= URL_CACHE_MAX then url_cache, url_cached = {}, 0 end
  url_cache[url], url_cached = u, url_cached + 1
  return u
end

local function split(path)
  local t, i = {}, 1
  while true do
    local j = path:find("/", i, true)
    if not j then t[#t + 1] = path:sub(i) return t end
    t[#t + 1] = path:sub(i, j - 1)
    i = j + 1
  end
end

-- RFC 3986 §5.2.4, for a path that begins with "/".
local function remove_dots(path)
  local input, out = split(path), {}
  for i = 2, #input do
    local s, last = input[i], i == #input
    if s == ".." then out[#out] = nil end
    if s == "." or s == ".." then
      if last then out[#out + 1] = "" end
    else
      out[#out + 1] = s
    end
  end
  return "/" .. table.concat(out, "/")
end

-- The URL a Location header leads to from `base` (RFC 3986 §5.2).
local function resolve(base, loc)
  loc = loc:gsub("#.*$", "")
  if loc:match("^%a[%w+.%-]*:") then return parse_url(loc) end
  if loc:sub(1, 2) == "//" then return parse_url("http:" .. loc) end
  local path, query = loc:match("^([^?]*)(.*)$")
  if path == "" then
    path = base.path
    if query == "" then query = base.query end
  elseif path:sub(1, 1) ~= "/" then
    path = base.path:match("^(.*/)") .. path
  end
  local u = {}
  for k, v in pairs(base) do u[k] = v end
  u.path, u.query = encode_target(remove_dots(path)), encode_target(query)
  return u
end

---------------------------------------------------------------------------
-- Options and the request's bytes (misuse raises here, before any I/O)
---------------------------------------------------------------------------

local function misuse(msg, level)
  error("moonring.http: " .. msg, level + 1)
end

local function check_seconds(opts, name, default, level)
  local v = opts[name]
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v <= 0 then
    misuse(name .. " must be a number of seconds > 0, got " .. tostring(v), level + 1)
  end
  return v
end

local function check_count(opts, name, default, min, level)
  local v = opts[name]
  if v == nil then return default end
  if math.type(v) ~= "integer" or v < min then
    misuse(name .. " must be an integer >= " .. min .. ", got " .. tostring(v), level + 1)
  end
  return v
end

-- opts.headers → an array of { name, value }, checked: names are tokens,
-- values strings or numbers (or arrays of them, one line each) without CR,
-- LF or NUL. Content-Length and Transfer-Encoding are the client's own.
local NO_HEADERS = {}                  -- shared: never added to

local function check_headers(hs, level)
  if hs == nil then return NO_HEADERS end
  local list = {}
  if type(hs) ~= "table" then misuse("headers must be a table, got " .. type(hs), level + 1) end
  local function add(name, v)
    if type(v) == "number" then v = tostring(v) end
    if type(v) ~= "string" then
      misuse("header " .. name .. " must be a string or number, got " .. type(v), level + 2)
    end
    if v:find("[\r\n\0]") then
      misuse("header " .. name .. " has a CR, LF or NUL in its value", level + 2)
    end
    local lname = name:lower()
    if lname ~= "content-length" and lname ~= "transfer-encoding" then
      list[#list + 1] = { name, v, lname, #list }
    end
  end
  for name, v in pairs(hs) do
    if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
      misuse("bad header name " .. string.format("%q", tostring(name)), level + 1)
    end
    if type(v) == "table" then
      for _, item in ipairs(v) do add(name, item) end
    else
      add(name, v)
    end
  end
  table.sort(list, function(a, b) return a[3] < b[3] or (a[3] == b[3] and a[4] < b[4]) end)
  return list
end

local function has_header(rq, lname)
  for _, h in ipairs(rq.headers) do
    if h[3] == lname then return h[2] end
  end
end

-- The request as the rest of this file uses it, from request{...}'s options.
local function check_options(opts, level)
  if type(opts) ~= "table" then misuse("expected an options table, got " .. type(opts), level + 1) end
  local method = opts.method or "GET"
  if not KNOWN_METHOD[method] then
    if type(method) ~= "string" or not method:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
      misuse("method must be a token such as \"GET\", got " .. tostring(method), level + 1)
    end
    method = method:upper()
  end
  if type(opts.url) ~= "string" then misuse("url must be a string, got " .. type(opts.url), level + 1) end
  if opts.body ~= nil and type(opts.body) ~= "string" then
    misuse("body must be a string or nil, got " .. type(opts.body), level + 1)
  end
  -- each option is checked only when given (the common call gives few)
  local timeout, v = http.DEFAULT_TIMEOUT, opts.timeout
  if v ~= nil then timeout = check_seconds(opts, "timeout", timeout, level + 1) end
  local stream = opts.stream and true or false
  local rq = {
    method = method,
    headers = NO_HEADERS,
    body = opts.body,
    timeout = timeout,
    connect_timeout = http.DEFAULT_CONNECT_TIMEOUT,
    read_timeout = timeout,
    stream = stream,
    redirects = 0,
    keepalive = opts.keepalive ~= false,
    pool_size = http.DEFAULT_POOL_SIZE,
    max_body = not stream and http.DEFAULT_MAX_BODY or nil,
    close_after = false, deadline = false, pooled = false,   -- set below (sized here)
  }
  if opts.headers ~= nil then rq.headers = check_headers(opts.headers, level + 1) end
  if opts.connect_timeout ~= nil then
    rq.connect_timeout = check_seconds(opts, "connect_timeout", nil, level + 1)
  end
  if opts.read_timeout ~= nil then rq.read_timeout = check_seconds(opts, "read_timeout", nil, level + 1) end
  if opts.redirects ~= nil then rq.redirects = check_count(opts, "redirects", 0, 0, level + 1) end
  if opts.pool_size ~= nil then rq.pool_size = check_count(opts, "pool_size", nil, 1, level + 1) end
  if opts.max_body ~= nil then rq.max_body = check_count(opts, "max_body", nil, 0, level + 1) end
  rq.close_after = not rq.keepalive or (rq.headers ~= NO_HEADERS and
    ((has_header(rq, "connection") or ""):lower():find("close", 1, true) ~= nil))
  -- the common case, one C call on a pooled connection (pooled() below)
  rq.pooled = not stream and rq.redirects == 0 and not rq.close_after
    and (rq.body == nil or #rq.body < SEND_TOGETHER)
  return rq
end


-- The request head: the caller's headers, then Host, User-Agent, Connection
-- and Content-Length unless the caller set them (Content-Length: always ours).
local function make_head(rq, url)
  local out = { rq.method, " ", url.path, url.query, " HTTP/1.1\r\n" }
  for _, h in ipairs(rq.headers) do
    out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n"
  end
  if not has_header(rq, "host") then out[#out + 1] = "Host: " .. url.authority .. "\r\n" end
  if not has_header(rq, "user-agent") then out[#out + 1] = "User-Agent: " .. http.USER_AGENT .. "\r\n" end
  if not has_header(rq, "connection") then
    out[#out + 1] = rq.keepalive and "Connection: keep-alive\r\n" or "Connection: close\r\n"
  end
  local m = rq.method
  if rq.body or m == "POST" or m == "PUT" or m == "PATCH" then
    out[#out + 1] = "Content-Length: " .. #(rq.body or "") .. "\r\n"
  end
  out[#out + 1] = "\r\n"
  return table.concat(out)
end

-- Heads of plain requests (no headers of the caller's, no body) are the
-- same every time for a method and URL: kept, like the URLs.
local head_cache, head_cached = {}, 0

local function build_head(rq, url)
  if rq.headers ~= NO_HEADERS or rq.body then return make_head(rq, url) end
  local byurl = head_cache[url]
  local key = rq.keepalive and rq.method or rq.method .. " close"
  local head = byurl and byurl[key]
  if head then return head end
  head = make_head(rq, url)
  if not byurl then
    if head_cached >= URL_CACHE_MAX then head_cache, head_cached = {}, 0 end
    byurl = {}
    head_cache[url], head_cached = byurl, head_cached + 1
  end
  byurl[key] = head
  return head
end

---------------------------------------------------------------------------
-- Time: a total deadline, shrunk by the request's own (moonring.deadline)
---------------------------------------------------------------------------

-- moonring.deadline(): seconds the calling request has left, or nil.
local request_left = core.deadline or function() return nil end
local clock = core.clock                 -- seconds, monotonic

-- Seconds this call may still wait: the least of its own deadline and what
-- the calling request has left before its 504.
local function time_left(rq)
  local left = rq.deadline - clock()
  local r = request_left()
  if r and r < left then left = r end
  return left
end

local ceil = math.ceil

local function ms(s)
  local n = ceil(s * 1000)
  if n > 0xffffffff then return 0 end   -- 0: no timeout (over 49 days: as good as none)
  return n > 1 and n or 1
end

-- Sets sock's timeouts for its next operation (`left`: the call's time left,
-- if the caller has it); false once no time is left.
local function arm(sock, rq, left)
  left = left or time_left(rq)
  if left <= 0 then return false end
  local c, r = rq.connect_timeout, rq.read_timeout
  r = ms(r < left and r or left)
  sock:settimeouts(ms(c < left and c or left), r, r)
  return true
end

---------------------------------------------------------------------------
-- One connection: connect, send, read the head, then the body
---------------------------------------------------------------------------

local function read_some(c)
  if not arm(c.sock, c.rq) then return nil, "timeout" end
  return c.sock:receiveany(READ_SIZE)
end

-- The connection is done with: back to the pool when the response allows
-- it, closed otherwise.
local function release(c)
  c.finished = true
  local rq = c.rq
  local keep = c.keep                        -- fetch's verdict when it read the whole response
  if keep == nil then keep = c.p:keepalive() end   -- a streamed body: the parser's
  if rq.keepalive and not c.close_after and keep then
    if c.sock:setkeepalive(http.KEEPALIVE_IDLE * 1000, rq.pool_size) then return end
  end
  c.sock:close()
end

local function abort(c, err)
  c.finished, c.err = true, err
  c.sock:close()
  return false, err
end

-- The next piece of the body: a non-empty string; nil at its end (the
-- connection released); or false, message (the connection closed).
local function next_piece(c)
  while true do
    if c.err then return false, c.err end
    if c.finished then return nil end
    local s = c.p:body()
    if s ~= "" then
      c.received = c.received + #s
      if c.rq.max_body and c.received > c.rq.max_body then return abort(c, "body over max_body") end
      return s
    end
    if c.p:done() then
      release(c)
      return nil
    end
    local data, err = read_some(c)
    local ok
    if data then
      ok, err = c.p:feed(data)
    elseif err == "closed" then
      ok = c.p:finish()
      err = "closed before the end of the body"
    end
    if not ok then return abort(c, err) end
  end
end

local fetch, http_pooled = core.http_fetch, core.http_pooled

-- Response parsers, reused once a buffered response was taken out of one.
local PARSERS_MAX = 64
local parsers, nparsers = {}, 0

local function take_parser(head)
  if nparsers == 0 then return core.http_parser(head) end
  local p = parsers[nparsers]
  parsers[nparsers], nparsers = nil, nparsers - 1
  p:reset(head)
  return p
end

local function give_parser(p)
  if nparsers < PARSERS_MAX then
    nparsers = nparsers + 1
    parsers[nparsers] = p
  end
end

-- One try: a connection (pooled or new), the request sent, and the response
-- read by core.http_fetch (core/fetch.c) straight from the socket into the
-- parser: all of it, or with stream = true its head. Returns c, or nil,
-- message, and whether the request may be repeated on another connection
-- (it failed on a reused one before any response byte arrived: the server
-- had closed it meanwhile).
local function attempt(rq, url)
  local sock = core.tcp()
  local left = time_left(rq)
  if not arm(sock, rq, left) then return nil, "timeout" end
  local ok, err = sock:connect(url.host, url.port)
  if not ok then return nil, err end
  local reused = err ~= nil                  -- connect's second value: taken from the pool
  if not reused then left = time_left(rq) end   -- a new connection took time
  local p = take_parser(rq.method == "HEAD")
  local c = {
    sock = sock, rq = rq, url = url, received = 0, p = p, close_after = rq.close_after,
    status = false, headers = false, body = false, keep = false, finished = false, err = false,
  }
  local head, body = build_head(rq, url), rq.body
  local data = head
  if body and #body < SEND_TOGETHER then
    data = head .. body
  elseif body then
    ok, err = sock:send(head)
    if ok then ok, err = sock:send(body) end
    if not ok then
      sock:close()
      return nil, err, reused and err ~= "timeout"
    end
    data = nil
    left = time_left(rq)
  end
  if left <= 0 then
    sock:close()
    return nil, "timeout"
  end
  -- the head only when the body may not be wanted (streamed, or a redirect
  -- to follow): response() or discard() reads it
  local head_only = rq.stream or rq.redirects > 0
  local status, headers, rbody, keep = fetch(sock, p, data, head_only, ms(left), rq.max_body or 0)
  if not status then                         -- nil, err, nothing arrived
    sock:close()
    return nil, headers, reused and rbody and headers ~= "timeout"
  end
  if status == 101 then
    sock:close()
    return nil, "bad response: 101 Switching Protocols (upgrades are not supported)"
  end
  c.status, c.headers, c.body, c.keep = status, headers, rbody, keep
  return c
end

-- attempt(), repeated while a reused connection proved dead (an idempotent
-- request only): the next try takes another pooled connection or a new one,
-- and a new one is never repeated.
local function exchange(rq, url)
  local tries = IDEMPOTENT[rq.method] and rq.pool_size + 1 or 1
  local c, err, again
  for _ = 1, tries do
    c, err, again = attempt(rq, url)
    if c or not again then break end
  end
  return c, err
end

local function nothing_to_close() end

-- The whole exchange in one C call (core/fetch.c) when the pool has a
-- connection to url's host: sent, read, and the connection back in the
-- pool (or closed), with no socket object or state table made here.
-- `left`: the seconds the call may take. → the response; nil, err; or
-- false when there is no pooled connection, or it proved dead before any
-- response byte (then exchange() goes on).
local function pooled(rq, url, left)
  if left <= 0 then return nil, "timeout" end
  local p = take_parser(rq.method == "HEAD")
  local data = build_head(rq, url)
  if rq.body then data = data .. rq.body end
  local r = rq.read_timeout
  local status, headers, body = http_pooled(url.key, p, data, ms(left), ms(r < left and r or left),
    rq.max_body or 0, http.KEEPALIVE_IDLE * 1000, rq.pool_size)
  if status then
    give_parser(p)
    if status == 101 then
      return nil, "bad response: 101 Switching Protocols (upgrades are not supported)"
    end
    return { status = status, headers = headers, body = body, close = nothing_to_close }
  end
  if status == nil and not (body and headers ~= "timeout" and IDEMPOTENT[rq.method]) then
    return nil, headers
  end
  return false
end

---------------------------------------------------------------------------
-- Responses and redirects
---------------------------------------------------------------------------

local function response(c)
  if not c.rq.stream then                    -- fetch read it all (and kept max_body)
    if c.body == nil then                    -- or only the head: the body now
      local left, status, err, body, keep = time_left(c.rq), nil, "timeout", nil, nil
      if left > 0 then status, err, body, keep = fetch(c.sock, c.p, nil, false, ms(left), c.rq.max_body or 0) end
      if not status then
        c.sock:close()
        return nil, err
      end
      c.body, c.keep = body, keep
    end
    local body = c.body
    release(c)
    give_parser(c.p)
    return { status = c.status, headers = c.headers, body = body, close = nothing_to_close }
  end
  local res = { status = c.status, headers = c.headers }
  function res.close()
    if not c.finished then
      c.finished = true
      c.sock:close()
    end
  end
  res.body = function()
    local s, err = next_piece(c)
    if s == false then error("moonring.http: reading the body failed: " .. err, 0) end
    return s
  end
  return res
end

-- Reads and drops a redirect's body so its connection can be pooled; a big
-- one is not worth it: the connection is closed instead.
local function discard(c)
  local n = 0
  while n <= DRAIN_MAX do
    local s = next_piece(c)
    if not s then return end
    n = n + #s
  end
  abort(c, "redirect body dropped")
end

-- The request to make for a redirect response c, or nil, message.
local function follow(rq, url, c)
  local loc = c.headers.location
  if not loc or loc == "" then return nil, "bad redirect: " .. c.status .. " without a Location" end
  local next_url, err = resolve(url, loc)
  if not next_url then
    if err == "userinfo" then err = "bad url: user info (user@) in the Location" end
    return nil, err
  end
  local nrq = {}
  for k, v in pairs(rq) do nrq[k] = v end
  if c.status == 303 or ((c.status == 301 or c.status == 302) and rq.method == "POST") then
    if rq.method ~= "HEAD" then nrq.method, nrq.body = "GET", nil end
  end
  if next_url.authority ~= url.authority then
    -- credentials and a Host of the caller's do not travel to another server
    local kept = {}
    for _, h in ipairs(rq.headers) do
      local n = h[3]
      if n ~= "authorization" and n ~= "cookie" and n ~= "proxy-authorization" and n ~= "host" then
        kept[#kept + 1] = h
      end
    end
    nrq.headers = kept
  end
  return nrq, next_url
end

---------------------------------------------------------------------------
-- The API
---------------------------------------------------------------------------

-- request{ method, url, headers, body, timeout, connect_timeout,
-- read_timeout, stream, max_body, redirects, keepalive, pool_size }
-- → { status =, headers =, body = } or nil, message.
local function request(opts, level)
  local rq = check_options(opts, level + 1)
  local url, err = parse_url_cached(opts.url)
  if err == "userinfo" then
    misuse("credentials in the url (user@host) are not supported: send an Authorization header", level + 1)
  end
  if not url then return nil, err end
  rq.deadline = clock() + rq.timeout
  if rq.pooled then
    local res, perr = pooled(rq, url, time_left(rq))
    if res ~= false then return res, perr end
  end
  for hop = 0, rq.redirects do
    local c
    c, err = exchange(rq, url)
    if not c then return nil, err end
    if not (REDIRECT[c.status] and rq.redirects > 0) then return response(c) end
    if hop == rq.redirects then
      c.sock:close()
      return nil, "too many redirects (" .. rq.redirects .. " followed)"
    end
    discard(c)
    rq, url = follow(rq, url, c)
    if not rq then return nil, url end
  end
end

-- (Never a tail call into request: misuse errors name the caller's line.)
function http.request(opts)
  local res, err = request(opts, 2)
  return res, err
end

-- opts (may be nil) with `fields` set, and method defaulting to `method`.
local function with(opts, method, url, body, level)
  if opts ~= nil and type(opts) ~= "table" then
    misuse("expected an options table, got " .. type(opts), level + 1)
  end
  local o = { method = method }
  if opts then for k, v in pairs(opts) do o[k] = v end end
  o.url = url
  if body ~= nil then o.body = body end
  return o
end

-- get(url [, opts]) → request{ method = "GET", url = url, ... }
function http.get(url, opts)
  local res, err = request(with(opts, "GET", url, nil, 2), 2)
  return res, err
end

-- post(url, body [, opts]) → request{ method = "POST", url = url, body = body, ... }
function http.post(url, body, opts)
  local res, err = request(with(opts, "POST", url, body, 2), 2)
  return res, err
end

---------------------------------------------------------------------------
-- Clients: one upstream's options, checked once
---------------------------------------------------------------------------

local Client = {}
Client.__index = Client

-- client{ url = base, ...request options } → a client for one upstream:
-- its options are checked (misuse raises here) and its URL parsed once, so
-- each call does only the exchange. client:get(path [, opts]),
-- client:post(path, body [, opts]), client:request([opts]): path is
-- appended to the base URL; opts (if any) are added to the client's.
function http.client(opts)
  local rq = check_options(opts, 2)
  local base = opts.url:gsub("/+$", "")
  local url, err = parse_url(base)
  if not url then misuse(err == "userinfo" and "credentials in the url (user@host) are not supported" or err, 2) end
  local own = {}
  for k, v in pairs(opts) do own[k] = v end
  return setmetatable({ opts = own, base = base, rq = rq, url = url, paths = {}, npaths = 0 }, Client)
end

-- A call through client c: the prepared request when nothing is added to
-- it and the pool has a connection, else request{} with the merged options.
local function client_call(c, level, path, method, body, extra)
  if path ~= nil and (type(path) ~= "string" or path:sub(1, 1) ~= "/") then
    misuse("the path must be a string starting with /, got " .. tostring(path), level + 1)
  end
  local rq = c.rq
  if extra == nil and body == nil and rq.pooled and (method == nil or method == rq.method) then
    local url = c.url
    if path then                             -- its URL, kept by path (emptied when full)
      url = c.paths[path]
      if not url then
        local err
        url, err = parse_url_cached(c.base .. path)
        if not url then return nil, err end
        if c.npaths >= URL_CACHE_MAX then c.paths, c.npaths = {}, 0 end
        c.paths[path], c.npaths = url, c.npaths + 1
      end
    end
    local left = rq.timeout
    local r = request_left()
    if r and r < left then left = r end
    local res, err = pooled(rq, url, left)
    if res ~= false then return res, err end
  end
  if extra ~= nil and type(extra) ~= "table" then
    misuse("expected an options table, got " .. type(extra), level + 1)
  end
  local o = {}
  for k, v in pairs(c.opts) do o[k] = v end
  if extra then for k, v in pairs(extra) do o[k] = v end end
  o.url = path and c.base .. path or (extra and extra.url) or c.opts.url
  if method then o.method = method end
  if body ~= nil then o.body = body end
  return request(o, level + 1)
end

function Client:request(opts)
  local res, err = client_call(self, 2, nil, nil, nil, opts)
  return res, err
end

function Client:get(path, opts)
  local res, err = client_call(self, 2, path, "GET", nil, opts)
  return res, err
end

function Client:post(path, body, opts)
  local res, err = client_call(self, 2, path, "POST", body, opts)
  return res, err
end

return http
