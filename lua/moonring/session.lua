-- moonring.session{ secret = "...", store = nil, ... }: middleware giving
-- each request `req.session`, a plain table loaded from the request's
-- session cookie and saved (the cookie set again) only when it changed.
--
-- Where the data lives is the store's business. Without a store the data is
-- in the cookie itself: JSON, base64url, a timestamp and an HMAC-SHA256 over
-- them (core/crypto.c), as `payload.timestamp.mac`. With a store (an object
-- with load/save/delete: session.memory_store{}, session.redis_store{} or
-- your own) the cookie holds a random id, signed the same way, and the data
-- stays on the server. A cookie that is tampered with, expired, signed with
-- an unknown secret or meant for another cookie name gives an empty session,
-- never an error. Flash messages ride in the session (key "_flash").
local moonring = require "moonring"
local core = require "moonring.core"
local handler = require "moonring.handler"
local cjson = require("cjson").new()   -- our own instance: others' settings stay theirs

local M = {
  DEFAULT_COOKIE = "moonring.session",
  DEFAULT_MAX_AGE = 14 * 24 * 3600,   -- seconds a session lives without being saved
  MIN_SECRET = 16,                    -- bytes a secret needs at least
  MAX_COOKIE = 4096,                  -- bytes a browser keeps of one cookie
  ID_BYTES = 32,                      -- random bytes in a store's session id
}

local b64e, b64d, hmac, equal = core.b64url_encode, core.b64url_decode, core.hmac_sha256, core.equal

---------------------------------------------------------------------------
-- Options
---------------------------------------------------------------------------

-- Raised with no position: session() re-raises it at its caller.
local function fail(msg) error("moonring.session: " .. msg, 0) end

local function check_secret(secret)
  local list = type(secret) == "string" and { secret } or secret
  if type(list) ~= "table" or #list == 0 then
    fail("secret must be a string or a non-empty array of strings (the first signs, all verify)")
  end
  for i, s in ipairs(list) do
    if type(s) ~= "string" or #s < M.MIN_SECRET then
      fail(string.format("secret %d must be a string of at least %d bytes", i, M.MIN_SECRET))
    end
  end
  return list
end

local function check_store(store)
  if store == nil then return nil end
  if type(store) ~= "table" then fail("store must be a store object (load, save, delete), got " .. type(store)) end
  for _, m in ipairs { "load", "save", "delete" } do
    if type(store[m]) ~= "function" then fail("store has no " .. m .. " method") end
  end
  return store
end

local SAME_SITE = { Lax = true, Strict = true, None = true }

local function check_options(opts)
  if opts == nil then fail("expected an options table with a secret") end
  if type(opts) ~= "table" then fail("expected an options table, got " .. type(opts)) end
  local o = {
    secrets = check_secret(opts.secret),
    store = check_store(opts.store),
    cookie = opts.cookie == nil and M.DEFAULT_COOKIE or opts.cookie,
    max_age = opts.max_age == nil and M.DEFAULT_MAX_AGE or opts.max_age,
    path = opts.path == nil and "/" or opts.path,
    domain = opts.domain,
    http_only = opts.http_only ~= false,
    same_site = opts.same_site == nil and "Lax" or opts.same_site,
    secure = opts.secure == true,
  }
  if type(o.cookie) ~= "string" or not o.cookie:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
    fail("cookie must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)")
  end
  if math.type(o.max_age) ~= "integer" or o.max_age < 1 then
    fail("max_age must be a whole number of seconds >= 1")
  end
  if type(o.path) ~= "string" or not o.path:match("^/[^;%c]*$") then
    fail("path must be a string starting with / (no ; or control characters)")
  end
  if o.domain ~= nil and (type(o.domain) ~= "string" or not o.domain:match("^[%w.%-]+$")) then
    fail("domain must be a host name")
  end
  for _, k in ipairs { "http_only", "secure" } do
    if opts[k] ~= nil and type(opts[k]) ~= "boolean" then fail(k .. " must be a boolean") end
  end
  if not SAME_SITE[o.same_site] then fail('same_site must be "Lax", "Strict" or "None"') end
  if o.same_site == "None" and not o.secure then
    fail('same_site = "None" needs secure = true (browsers refuse it otherwise)')
  end
  return o
end

---------------------------------------------------------------------------
-- The cookie: reading, signing, writing
---------------------------------------------------------------------------

-- Values of every cookie called `name` in the Cookie header, in order (a
-- browser may send several, from different paths).
local function cookie_values(header, name)
  local out = {}
  if type(header) ~= "string" then return out end
  for pair in header:gmatch("[^;]+") do
    local k, v = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
    if k == name then
      out[#out + 1] = v:match('^"(.*)"$') or v
    end
  end
  return out
end

-- The MAC binds the kind ("c": data in the cookie, "s": a store's id), the
-- cookie name and the timestamp to the payload.
local function mac(key, kind, name, payload, ts)
  return b64e(hmac(key, kind .. "\0" .. name .. "\0" .. payload .. "." .. ts))
end

local function sign(o, kind, payload, ts)
  return payload .. "." .. ts .. "." .. mac(o.secrets[1], kind, o.cookie, payload, ts)
end

-- payload, timestamp, signed_by_first_secret for a valid, unexpired value;
-- nil for anything else.
local function verify(o, kind, value, now)
  if #value > M.MAX_COOKIE then return nil end
  local payload, ts, tag = value:match("^([%w_%-]+)%.(%d+)%.([%w_%-]+)$")
  if not payload then return nil end
  local t = math.tointeger(tonumber(ts))
  if not t or t > now + 60 or now - t > o.max_age then return nil end
  for i, key in ipairs(o.secrets) do
    if equal(mac(key, kind, o.cookie, payload, ts), tag) then return payload, t, i == 1 end
  end
  return nil
end

local function set_cookie_line(o, value, max_age)
  local parts = { o.cookie .. "=" .. value, "Path=" .. o.path }
  if o.domain then parts[#parts + 1] = "Domain=" .. o.domain end
  parts[#parts + 1] = "Max-Age=" .. max_age
  if o.http_only then parts[#parts + 1] = "HttpOnly" end
  if o.secure then parts[#parts + 1] = "Secure" end
  parts[#parts + 1] = "SameSite=" .. o.same_site
  return table.concat(parts, "; ")
end

-- A copy of the response with one more set-cookie line: the handler's table
-- may be shared between requests, so it is never changed in place.
local function with_cookie(res, line)
  local out = {}
  for k, v in pairs(res) do out[k] = v end
  local headers, key = {}, "set-cookie"
  for k, v in pairs(res.headers or {}) do
    headers[k] = v
    if type(k) == "string" and k:lower() == "set-cookie" then key = k end
  end
  local old = headers[key]
  if old == nil then
    headers[key] = line
  elseif type(old) == "table" then
    local list = { table.unpack(old) }
    list[#list + 1] = line
    headers[key] = list
  else
    headers[key] = { old, line }
  end
  out.headers = headers
  return out
end

---------------------------------------------------------------------------
-- Loading and saving
---------------------------------------------------------------------------

local function encode(data)
  local ok, json = pcall(cjson.encode, data)
  if not ok then
    error("moonring.session: the session must hold only JSON values (strings, numbers, " ..
      "booleans, tables): " .. tostring(json), 0)
  end
  return json
end

-- lua-cjson reads every number as a float; a session's counters and ids
-- should come back as the integers they were.
local function integers(t, depth)
  if depth > 100 then return end
  for k, v in pairs(t) do
    if math.type(v) == "float" then
      local i = math.tointeger(v)
      if i and i >= -2 ^ 53 and i <= 2 ^ 53 then t[k] = i end
    elseif type(v) == "table" then
      integers(v, depth + 1)
    end
  end
end

local function decode(json)
  local ok, data = pcall(cjson.decode, json)
  if not (ok and type(data) == "table") then return nil end
  integers(data, 0)
  return data
end

-- What the request started with: data (the table given as req.session),
-- its JSON (to tell a change), the store id and the cookie's timestamp, and
-- whether the cookie should be signed again (old secret, half its life gone).
local function load(o, req, now)
  local kind = o.store and "s" or "c"
  for _, value in ipairs(cookie_values(req.headers and req.headers.cookie, o.cookie)) do
    local payload, ts, current = verify(o, kind, value, now)
    if payload then
      local data
      if o.store then
        data = o.store:load(payload)
        if type(data) ~= "table" then data = nil end
      else
        local json = b64d(payload)
        data = json and decode(json)
      end
      if data then
        return {
          data = data, json = encode(data), id = o.store and payload or nil, had_cookie = true,
          renew = not current or now - ts > o.max_age // 2,
        }
      end
    end
  end
  return { data = {}, json = "{}", had_cookie = false }
end

local function new_id()
  local bytes, err = core.random_bytes(M.ID_BYTES)
  if not bytes then error("moonring.session: " .. err, 0) end
  return b64e(bytes)
end

-- The response, with the cookie set or cleared when the session needs it.
local function commit(o, st, req, res, now)
  if type(res) ~= "table" then return res end
  local data = req.session
  if data == nil then                                  -- destroyed
    if o.store and st.id then o.store:delete(st.id) end
    if not st.had_cookie then return res end
    return with_cookie(res, set_cookie_line(o, "", 0))
  end
  if type(data) ~= "table" then
    error("moonring.session: req.session must be a table or nil, got " .. type(data), 0)
  end
  local replaced = data ~= st.data
  local json = encode(data)
  if json == st.json and not replaced and not st.renew then return res end
  if next(data) == nil then                            -- emptied: nothing to keep
    if o.store and st.id then o.store:delete(st.id) end
    if not st.had_cookie then return res end
    return with_cookie(res, set_cookie_line(o, "", 0))
  end
  local ts = string.format("%d", now)
  local value
  if o.store then
    local id = st.id
    if replaced or not id then                         -- a new session gets a new id
      if id then o.store:delete(id) end
      id = new_id()
    end
    o.store:save(id, data, o.max_age)
    value = sign(o, "s", id, ts)
  else
    value = sign(o, "c", b64e(json), ts)
  end
  if #o.cookie + 1 + #value > M.MAX_COOKIE then
    error(string.format("moonring.session: the session is %d bytes, too big for a cookie " ..
      "(%d at most): keep less in it, or use a store (session.memory_store{}, " ..
      "session.redis_store{})", #json, M.MAX_COOKIE), 0)
  end
  return with_cookie(res, set_cookie_line(o, value, o.max_age))
end

-- req.flash(msg): a message for the next request that reads flash messages.
local function flasher(req)
  return function(msg)
    if msg == nil then error("moonring.session: req.flash needs a message", 2) end
    local s = req.session
    if s == nil then s = {}; req.session = s end
    local list = s._flash
    if type(list) ~= "table" then list = {}; s._flash = list end
    list[#list + 1] = msg
  end
end

-- req.flash_messages() → the messages flashed so far (an array, maybe
-- empty); they are gone from the session once read.
local function flash_reader(req)
  return function()
    local s = req.session
    local list = s and s._flash
    if s then s._flash = nil end
    return type(list) == "table" and list or {}
  end
end

local function session(opts)
  local ok, o = pcall(check_options, opts)
  if not ok then error(o, 2) end
  return function(inner)
    if type(inner) ~= "function" then
      error("moonring.session: expected a handler function, got " .. type(inner), 2)
    end
    return function(req)
      local now = math.floor(core.now())
      local st = load(o, req, now)
      req.session = st.data
      req.flash = flasher(req)
      req.flash_messages = flash_reader(req)
      local res = handler.call(inner, req)
      return commit(o, st, req, res, now)
    end
  end
end

---------------------------------------------------------------------------
-- Stores
---------------------------------------------------------------------------

-- memory_store{ name = "default", max = 10000 }: sessions kept in this
-- worker's memory (moonring.state, so they outlive a code reload, not a
-- restart; each worker has its own). At `max` sessions, expired ones are
-- swept, then the oldest saved goes.
function M.memory_store(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("moonring.session.memory_store: expected an options table", 2) end
  local name, max = opts.name or "default", opts.max or 10000
  if type(name) ~= "string" then error("moonring.session.memory_store: name must be a string", 2) end
  if math.type(max) ~= "integer" or max < 1 then
    error("moonring.session.memory_store: max must be a whole number >= 1", 2)
  end
  local st = moonring.state("moonring.session.memory:" .. name, function()
    return { entries = {}, count = 0, seq = 0 }
  end)
  local entries = st.entries

  local function drop(id)
    if entries[id] then entries[id] = nil; st.count = st.count - 1 end
  end

  local function make_room(now)
    for id, e in pairs(entries) do
      if e.expires <= now then drop(id) end
    end
    while st.count >= max do
      local oldest, seq
      for id, e in pairs(entries) do
        if not seq or e.seq < seq then oldest, seq = id, e.seq end
      end
      drop(oldest)
    end
  end

  local store = {}
  function store:load(id)
    local e = entries[id]
    if not e then return nil end
    if e.expires <= core.now() then drop(id) return nil end
    return decode(e.json)
  end
  function store:save(id, data, ttl)
    local now = core.now()
    if not entries[id] then
      if st.count >= max then make_room(now) end
      st.count = st.count + 1
    end
    st.seq = st.seq + 1
    entries[id] = { json = encode(data), expires = now + ttl, seq = st.seq }
  end
  function store:delete(id) drop(id) end
  function store:count() return st.count end
  return store
end

local REDIS_OPTIONS = { host = "string", port = "number", prefix = "string", timeout = "number",
                        password = "string", user = "string", db = "number" }

-- redis_store{ host = "127.0.0.1", port = 6379, prefix = "moonring:session:",
-- timeout, password, user, db }: sessions in Redis (moonring.redis), as JSON
-- under prefix .. id with an expiry of max_age. One pooled connection per
-- operation. Redis failing is an error (the request gets a 500), not a
-- silently empty session.
function M.redis_store(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("moonring.session.redis_store: expected an options table", 2) end
  for k, v in pairs(opts) do
    if not REDIS_OPTIONS[k] then error("moonring.session.redis_store: unknown option " .. tostring(k), 2) end
    if type(v) ~= REDIS_OPTIONS[k] then
      error("moonring.session.redis_store: " .. k .. " must be a " .. REDIS_OPTIONS[k], 2)
    end
  end
  local redis = require "moonring.redis"
  local host, port = opts.host or "127.0.0.1", opts.port or 6379
  local prefix = opts.prefix or "moonring:session:"
  local conn_opts = { timeout = opts.timeout, password = opts.password, user = opts.user, db = opts.db }

  -- Runs fn(client) on a pooled connection; its first result, or raises.
  local function with_client(what, fn)
    local c, err = redis.connect(host, port, conn_opts)
    if not c then error("moonring.session: redis store: " .. what .. ": " .. tostring(err), 0) end
    local v, e = fn(c)
    if v == nil then
      c:close()
      error("moonring.session: redis store: " .. what .. ": " .. tostring(e), 0)
    end
    c:keepalive()
    return v
  end

  local store = {}
  function store:load(id)
    local json = with_client("load", function(c) return c:get(prefix .. id) end)
    if json == redis.null then return nil end
    return decode(json)
  end
  function store:save(id, data, ttl)
    with_client("save", function(c) return c:set(prefix .. id, encode(data), "EX", math.ceil(ttl)) end)
  end
  function store:delete(id)
    with_client("delete", function(c) return c:del(prefix .. id) end)
  end
  return store
end

M.session = session
return setmetatable(M, { __call = function(_, opts) return session(opts) end })
