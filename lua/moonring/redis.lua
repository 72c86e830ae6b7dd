-- require "moonring.redis": a small RESP2 client on moonring's cosockets.
--
--   local redis = require "moonring.redis"
--   local c, err = redis.connect("127.0.0.1", 6379, { timeout = 2 })
--   c:set("k", "v")                   -- "OK"
--   c:get("k")                        -- "v" (redis.null when missing)
--   c:keepalive()                     -- back to this worker's pool
--
-- A client owns one connection: a cosocket, which belongs to the request
-- whose task connected it and is closed when that request ends. c:close()
-- or c:keepalive() gives it up; the client then answers nil, "closed". A
-- failure of the connection itself (timeout, reset, a cancelled wait, a
-- reply it cannot parse) closes it too, since replies could no longer be
-- matched to commands. A subscription has a reader task of its own (spawned
-- by the subscribing task, so owned like it) that puts messages on a
-- moonring channel.
local moonring = require "moonring"
local core = require "moonring.core"
local cjson = require "cjson"

local redis = {
  -- The value of a missing key, a nil bulk or array reply (ngx.null too).
  null = cjson.null,
  -- Seconds each network wait (connect, a send, a reply) may take.
  DEFAULT_TIMEOUT = 5,
  -- Messages a subscription buffers before its reader stops reading.
  SUBSCRIBE_BUFFER = 128,
}

local null = redis.null
local CRLF = "\r\n"

---------------------------------------------------------------------------
-- The wire: encoding commands, parsing replies
---------------------------------------------------------------------------

local function arg_text(v)
  if type(v) == "string" then return v end
  local int = math.tointeger(v)
  if int then return string.format("%d", int) end
  return tostring(v)
end

-- Raises at `level` (as error() counts from check_args) unless every
-- argument is a string or a number.
local function check_args(name, args, level)
  for i = 1, args.n do
    local t = type(args[i])
    if t ~= "string" and t ~= "number" then
      error(string.format("moonring.redis: argument %d of %s is a %s (expected a string or a number)",
        i, name, t), level)
    end
  end
end

-- Appends the RESP array of `name` and the `n` arguments in args to out.
local function encode(out, name, args, n)
  out[#out + 1] = "*" .. (n + 1) .. CRLF .. "$" .. #name .. CRLF .. name .. CRLF
  for i = 1, n do
    local s = arg_text(args[i])
    out[#out + 1] = "$" .. #s .. CRLF
    out[#out + 1] = s
    out[#out + 1] = CRLF
  end
  return out
end

-- read_reply(sock, top) → value; or nil, message for an error reply (the
-- connection is fine); or nil, err, fatal when the connection failed
-- (fatal is "idle" for a timeout at the start of a reply, `top` only).
local function read_reply(sock, top)
  local line, err, partial = sock:receive("*l")
  if not line then
    -- a read timeout before any byte of a reply loses nothing
    local idle = top and err == "timeout" and (partial == nil or partial == "")
    return nil, err, idle and "idle" or true
  end
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "+" then return rest end
  if kind == "-" then return nil, rest end
  local n = math.tointeger(tonumber(rest))
  if n and kind == ":" then return n end
  if n and n < 0 and (kind == "$" or kind == "*") then return null end
  if n and kind == "$" then
    local data, rerr = sock:receive(n + 2)
    if not data then return nil, rerr, true end
    return data:sub(1, n)
  end
  if n and kind == "*" then
    local arr = {}
    for i = 1, n do
      local v, e, fatal = read_reply(sock, false)
      if fatal then return nil, e, true end
      arr[i] = v == nil and { nil, e } or v      -- an error inside an array (EXEC)
    end
    return arr
  end
  return nil, "bad reply from redis: " .. string.format("%q", line:sub(1, 80)), true
end

---------------------------------------------------------------------------
-- The client
---------------------------------------------------------------------------

local methods = {}
local commands = {}     -- method name → function sending that command
local run

-- c.anything is a method (methods) or else a command named after the key.
local function index(_, key)
  local m = methods[key]
  if m ~= nil or type(key) ~= "string" then return m end
  m = commands[key]
  if not m then
    local name = key:upper()
    m = function(c, ...)
      local v, err = run(c, name, table.pack(...), 3)
      return v, err
    end
    commands[key] = m
  end
  return m
end

local Client = { __index = index, __name = "moonring.redis client" }

-- The connection failed (or was given up): close it. The failing call
-- returns err; later calls return nil, "closed".
local function fail(c, err)
  if c._sock then
    c._sock:close()
    c._sock = false
  end
  c._err = "closed"
  return nil, err
end

-- Misuse raises at `level` as error() counts it from the checking
-- function (3: the caller of the public method that checks).
local function check_client(c, what, level)
  if getmetatable(c) ~= Client then
    error("moonring.redis: " .. what .. " must be called on a client (c:" .. what:lower() ..
      "(...))", level or 3)
  end
end

-- Runs fn(c, ...) holding the client, so that a second task using it at
-- once is told (misuse, raised at `level` from guarded). A wait that raises
-- (the task was cancelled) closes the connection, whose replies can no
-- longer be matched, and the error goes on.
local function guarded(c, what, level, fn, ...)
  if c._busy then
    error("moonring.redis: " .. what .. " while another task waits on this client " ..
      "(a client serves one task at a time; connect one per task, the pool makes it cheap)",
      level)
  end
  c._busy = true
  local ok, a, b = pcall(fn, c, ...)
  c._busy = false
  if not ok then
    fail(c, "closed")
    error(a, 0)
  end
  return a, b
end

-- Sends `pieces` and reads `n` replies: the replies (an error reply as
-- { nil, message }) packed, or nil, err when the connection failed.
local function exchange(c, pieces, n)
  local sock = c._sock
  local sent, err = sock:send(pieces)
  if not sent then return fail(c, err) end
  local out = { n = n }
  for i = 1, n do
    local v, e, fatal = read_reply(sock, true)
    if fatal then return fail(c, e) end
    out[i] = v == nil and { nil, e } or v
  end
  return out
end

local SUBSCRIBED = "subscribed (only subscribe and unsubscribe until the subscription ends)"

-- Runs (or queues, in a pipeline) command `name` with the packed args:
-- its value, or nil and the message of an error reply or of the failure.
-- Misuse raises at `level` as counted from run.
function run(c, name, args, level)
  check_client(c, name, level + 1)
  check_args(name, args, level + 1)
  if c._queue then
    encode(c._queue, name, args, args.n)
    c._queued = c._queued + 1
    return
  end
  if c._sub then return nil, SUBSCRIBED end
  if not c._sock then return nil, c._err end
  local out, err = guarded(c, name, level + 1, exchange, encode({}, name, args, args.n), 1)
  if not out then return nil, err end
  local v = out[1]
  if type(v) == "table" and v[1] == nil and v[2] ~= nil then return nil, v[2] end
  return v
end

-- c:call(name, ...) → the reply of command `name` (any case) with the
-- arguments (strings or numbers): value, or nil and the error message.
function methods.call(c, name, ...)
  if type(name) ~= "string" or name == "" then
    error("moonring.redis: call: expected a command name, got " .. type(name), 2)
  end
  local v, err = run(c, name:upper(), table.pack(...), 3)
  return v, err
end

---------------------------------------------------------------------------
-- Pipelining
---------------------------------------------------------------------------

-- c:init_pipeline(): the commands that follow are queued (they return
-- nothing) until c:commit_pipeline() sends them at once.
function methods.init_pipeline(c)
  check_client(c, "init_pipeline")
  if c._queue then error("moonring.redis: init_pipeline: a pipeline is already open", 2) end
  c._queue, c._queued = {}, 0
end

function methods.cancel_pipeline(c)
  check_client(c, "cancel_pipeline")
  c._queue, c._queued = false, 0
end

-- c:commit_pipeline() → an array with one entry per queued command: its
-- value, or { nil, message } for an error reply; or nil, err when the
-- connection failed (then no result is known).
function methods.commit_pipeline(c)
  check_client(c, "commit_pipeline")
  local pieces, n = c._queue, c._queued
  if not pieces then return nil, "no pipeline" end
  c._queue, c._queued = false, 0
  if c._sub then return nil, SUBSCRIBED end
  if not c._sock then return nil, c._err end
  if n == 0 then return { n = 0 } end
  local out, err = guarded(c, "commit_pipeline", 3, exchange, pieces, n)
  return out, err
end

-- c:pipeline(function(p) p:set(...) p:get(...) end) → as commit_pipeline.
-- `p` is the client, queueing; an error raised by fn discards the queue.
function methods.pipeline(c, fn)
  check_client(c, "pipeline")
  if type(fn) ~= "function" then
    error("moonring.redis: pipeline: expected a function(p), got " .. type(fn), 2)
  end
  if c._queue then error("moonring.redis: pipeline: a pipeline is already open", 2) end
  c._queue, c._queued = {}, 0
  local ok, err = pcall(fn, c)
  if not ok then
    c._queue, c._queued = false, 0
    error(err, 0)
  end
  local out, cerr = methods.commit_pipeline(c)
  return out, cerr
end

---------------------------------------------------------------------------
-- Publish / subscribe
---------------------------------------------------------------------------

local SUB_KINDS = { subscribe = true, psubscribe = true, unsubscribe = true, punsubscribe = true }
local PING = encode({}, "PING", { n = 0 }, 0)

-- One reply of a subscribed connection: true to go on, false when the
-- messages channel was closed, "clean" for the +PONG that follows the
-- last unsubscribe (every reply has then been read).
local function on_push(sub, v)
  if type(v) == "string" then return v == "PONG" and sub.ending and "clean" or true end
  if type(v) ~= "table" then return true end
  local kind = v[1]
  if kind == "message" then
    return sub.messages:put({ channel = v[2], message = v[3] }) and true or false
  elseif kind == "pmessage" then
    return sub.messages:put({ pattern = v[2], channel = v[3], message = v[4] }) and true or false
  elseif SUB_KINDS[kind] then
    sub.count = v[3]
    sub.ending = v[3] == 0 and (kind == "unsubscribe" or kind == "punsubscribe")
  end
  return true
end

local function read_loop(c, sub, sock)
  while c._sub == sub and sock == c._sock do
    local v, err, fatal = read_reply(sock, true)
    if fatal then
      if fatal ~= "idle" then return false end
    else
      local go = on_push(sub, v == nil and { "error", err } or v)
      if go ~= true then return go == "clean" end
    end
  end
  return false
end

-- The reader task of a subscription: replies → messages, until the last
-- channel is unsubscribed (the client is then usable again), or the
-- connection fails, or the messages channel is closed by its taker, or
-- the task is cancelled (the connection is then closed).
local function read_messages(c, sub)
  local ok, clean = pcall(read_loop, c, sub, c._sock)
  sub.messages:close()
  if c._sub == sub then c._sub = false end
  if not (ok and clean) then fail(c, "closed") end
  if not ok then error(clean, 0) end
end

-- Raises at `level` (from check_names) unless args holds channel names.
local function check_names(what, args, level)
  if args.n == 0 then
    error("moonring.redis: " .. what .. ": expected at least one channel name", level)
  end
  for i = 1, args.n do
    if type(args[i]) ~= "string" then
      error("moonring.redis: " .. what .. ": channel " .. i .. " is a " .. type(args[i]) ..
        " (expected a string)", level)
    end
  end
end

-- Sends `pieces` while the reader task reads the replies.
local function send_only(c, pieces)
  local sent, err = c._sock:send(pieces)
  if not sent then return fail(c, err) end
  return true
end

-- Sends the first SUBSCRIBE/PSUBSCRIBE and reads its confirmations (one
-- per name; an error reply, such as NOAUTH, comes once for the command).
local function start_subscription(c, name, args)
  local sock = c._sock
  local sent, err = sock:send(encode({}, name, args, args.n))
  if not sent then return fail(c, err) end
  local count
  for i = 1, args.n do
    local v, e, fatal = read_reply(sock, true)
    if fatal then return fail(c, e) end
    if v == nil and i == 1 then return nil, e end
    if type(v) ~= "table" or v[1] ~= name:lower() then
      return fail(c, "unexpected reply to " .. name)
    end
    count = v[3]
  end
  local sub = { messages = moonring.channel(redis.SUBSCRIBE_BUFFER), count = count }
  c._sub = sub
  sub.reader = moonring.spawn(read_messages, c, sub)
  return sub.messages
end

-- Misuse raises at the caller of the method calling subscribe.
local function subscribe(c, name, ...)
  local what = name:lower()
  check_client(c, what, 4)
  local args = table.pack(...)
  check_names(what, args, 4)
  if c._queue then error("moonring.redis: " .. what .. " inside a pipeline", 3) end
  if not c._sock then return nil, c._err end
  if c._sub then            -- more channels: the reader reads the confirmations
    local ok, err = guarded(c, what, 4, send_only, encode({}, name, args, args.n))
    if not ok then return nil, err end
    return c._sub.messages
  end
  local messages, err = guarded(c, what, 4, start_subscription, name, args)
  return messages, err
end

-- c:subscribe(channel, ...) → a moonring channel of { channel =, message = }
-- tables, or nil, err. Later calls add channels and return the same one.
function methods.subscribe(c, ...)
  local messages, err = subscribe(c, "SUBSCRIBE", ...)
  return messages, err
end

-- c:psubscribe(pattern, ...) → the same channel; messages carry `pattern`.
function methods.psubscribe(c, ...)
  local messages, err = subscribe(c, "PSUBSCRIBE", ...)
  return messages, err
end

-- c:unsubscribe([channel, ...]) → true, or nil, err. Without names it ends
-- the subscription (channels and patterns), closes the messages channel
-- and waits until the client can run commands again.
function methods.unsubscribe(c, ...)
  check_client(c, "unsubscribe")
  local args = table.pack(...)
  if args.n > 0 then check_names("unsubscribe", args, 3) end
  local sub = c._sub
  if not sub or not c._sock then return nil, "not subscribed" end
  local pieces = {}
  if args.n == 0 then
    encode(pieces, "UNSUBSCRIBE", args, 0)
    encode(pieces, "PUNSUBSCRIBE", args, 0)
  else
    encode(pieces, "UNSUBSCRIBE", args, args.n)
  end
  -- In subscribed mode PING answers an array; once the last channel is gone
  -- it answers +PONG, the reader's sign that every reply has been read.
  pieces[#pieces + 1] = PING
  local ok, err = guarded(c, "unsubscribe", 3, send_only, pieces)
  if not ok then return nil, err end
  if args.n == 0 then
    local _, jerr = sub.reader:join()
    if jerr then return nil, jerr end
    if not c._sock then return nil, c._err end
  end
  return true
end

-- c:punsubscribe(pattern, ...) → true, or nil, err.
function methods.punsubscribe(c, ...)
  check_client(c, "punsubscribe")
  local args = table.pack(...)
  check_names("punsubscribe", args, 3)
  if not c._sub or not c._sock then return nil, "not subscribed" end
  local ok, err = guarded(c, "punsubscribe", 3, send_only,
    encode(encode({}, "PUNSUBSCRIBE", args, args.n), "PING", { n = 0 }, 0))
  if not ok then return nil, err end
  return true
end

---------------------------------------------------------------------------
-- Giving the connection up; settings
---------------------------------------------------------------------------

-- c:close() → true (also when it was closed already). Ends a subscription:
-- its messages channel is closed.
function methods.close(c)
  check_client(c, "close")
  local sub = c._sub
  c._sub = false
  fail(c, "closed")
  if sub then
    sub.messages:close()
    sub.reader:cancel()
  end
  return true
end

local function check_seconds(seconds, what, min_exclusive)
  if type(seconds) ~= "number" or seconds < 0 or (min_exclusive and seconds == 0) then
    error("moonring.redis: " .. what .. " must be seconds (a number " ..
      (min_exclusive and "> 0" or ">= 0") .. "), got " .. tostring(seconds), 3)
  end
  return math.floor(seconds * 1000 + 0.5)
end

-- c:keepalive([idle_seconds [, pool_size]]) → true, or nil, err: the
-- connection goes back to this worker's pool for its pool name; the client
-- is closed either way.
function methods.keepalive(c, idle, size)
  check_client(c, "keepalive")
  local ms = idle ~= nil and check_seconds(idle, "keepalive: idle", false) or nil
  if size ~= nil and (math.type(size) ~= "integer" or size < 1) then
    error("moonring.redis: keepalive: pool_size must be an integer >= 1, got " .. tostring(size), 2)
  end
  if c._busy then error("moonring.redis: keepalive while another task waits on this client", 2) end
  if c._sub then return nil, "subscribed" end
  if c._queue then return nil, "pipeline not committed" end
  local sock = c._sock
  if not sock then return nil, c._err end
  c._sock, c._err = false, "closed"
  local ok, err = sock:setkeepalive(ms, size or c._pool_size or nil)
  if not ok then return nil, err end
  return true
end

-- c:reused() → how many times the connection came from the pool (0: new).
function methods.reused(c)
  check_client(c, "reused")
  if not c._sock then return nil, c._err end
  return c._sock:getreusedtimes()
end

-- c:set_timeout(seconds): the bound on each network wait from now on
-- (seconds, unlike lua-resty-redis's milliseconds).
function methods.set_timeout(c, seconds)
  check_client(c, "set_timeout")
  local ms = math.max(1, check_seconds(seconds, "set_timeout: timeout", true))
  c._timeout = seconds
  if c._sock then c._sock:settimeouts(ms, ms, ms) end
end

---------------------------------------------------------------------------
-- Connecting
---------------------------------------------------------------------------

local OPTION_TYPES = {
  timeout = "number", pool = "string", pool_size = "number",
  password = "string", user = "string", db = "number",
}

local function check_options(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error("moonring.redis.connect: options must be a table, got " .. type(opts), 3)
  end
  for k, v in pairs(opts) do
    local want = OPTION_TYPES[k]
    if not want then error("moonring.redis.connect: unknown option " .. tostring(k), 3) end
    if type(v) ~= want then
      error("moonring.redis.connect: option " .. k .. " must be a " .. want .. ", got " .. type(v), 3)
    end
  end
  if opts.timeout and opts.timeout <= 0 then
    error("moonring.redis.connect: option timeout must be seconds > 0", 3)
  end
  if opts.db and (math.type(opts.db) ~= "integer" or opts.db < 0) then
    error("moonring.redis.connect: option db must be an integer >= 0", 3)
  end
  if opts.pool_size and (math.type(opts.pool_size) ~= "integer" or opts.pool_size < 1) then
    error("moonring.redis.connect: option pool_size must be an integer >= 1", 3)
  end
  return opts
end

-- The default pool: host:port (the cosockets' own default, which
-- lua-resty-redis shares), then /db and #user when they differ from the
-- defaults. A password is never part of a pool name.
local function pool_name(host, port, opts)
  if opts.pool then return opts.pool end
  local name = port and (host .. ":" .. port) or host
  if (opts.db or 0) ~= 0 then name = name .. "/" .. opts.db end
  if opts.password then name = name .. "#" .. (opts.user or "default") end
  return name
end

-- AUTH and SELECT, on a connection that did not come from the pool.
local function prepare(c, opts)
  if opts.password then
    local ok, err
    if opts.user then ok, err = c:call("AUTH", opts.user, opts.password)
    else ok, err = c:call("AUTH", opts.password) end
    if not ok then return nil, err end
  end
  if (opts.db or 0) ~= 0 then
    local ok, err = c:call("SELECT", opts.db)
    if not ok then return nil, err end
  end
  return true
end

-- connect(host, port [, opts]) → client, or nil, err. host may be a name
-- or "unix:/path" (then port may be left out). opts: timeout (seconds,
-- default 5), pool, pool_size, password, user, db.
function redis.connect(host, port, opts)
  if type(host) ~= "string" then
    error("moonring.redis.connect: expected a host (string), got " .. type(host), 2)
  end
  local unix = host:sub(1, 5) == "unix:"
  if unix and type(port) == "table" and opts == nil then port, opts = nil, port end
  if not unix and math.type(port) ~= "integer" then
    error("moonring.redis.connect: expected a port (integer), got " .. tostring(port), 2)
  end
  opts = check_options(opts)
  local timeout = opts.timeout or redis.DEFAULT_TIMEOUT
  local ms = math.max(1, math.floor(timeout * 1000 + 0.5))
  local sock = (moonring.tcp or core.tcp)()
  sock:settimeouts(ms, ms, ms)
  local copts = { pool = pool_name(host, not unix and port, opts) }
  local ok, err
  if unix then ok, err = sock:connect(host, copts)
  else ok, err = sock:connect(host, port, copts) end
  if not ok then return nil, err end
  local c = setmetatable({
    _sock = sock, _err = false, _busy = false, _queue = false, _queued = 0, _sub = false,
    _timeout = timeout, _pool_size = opts.pool_size or false,
  }, Client)
  if sock:getreusedtimes() == 0 then
    local ready, perr = prepare(c, opts)
    if not ready then
      c:close()
      return nil, perr
    end
  end
  return c
end

return redis
