-- moonring.redis and Debian's lua-resty-redis (through moonring.ngx) against
-- a real redis-server this spec starts (helper.redis_start) and stops by
-- pid. Each scenario runs inside a route and answers a dump of what it saw;
-- the spec compares it with the documented results, and looks at Redis
-- directly (r:cmd) to see the effects from outside.
local helper = require "helper"
local socket = require "socket"

-- Route source with `moonring`, `redis` (moonring.redis), `u` (the
-- fixture's utilities) and `dump` in scope.
local function src(body)
  return 'local moonring = require "moonring"\nlocal redis = require "moonring.redis"\n' ..
    'local u = require "_lib.util"\nlocal state = require "_lib.state"\n' .. helper.DUMP .. body
end

-- A route answering dump(u.show(scenario(req, q))), q: the query.
local function scenario(body)
  return src("local function scenario(req, q)\n" .. body .. "\nend\n" .. [[
return function(req)
  return { status = 200, body = dump(u.show(scenario(req, u.query(req)))) }
end
]])
end

-- The same for lua-resty-redis: `redis` is Debian's driver (nginx.redis).
local function resty(body)
  return scenario('  require "moonring.ngx"\n  local redis = require "nginx.redis"\n' .. body)
end

local APP = {
  ["_lib/state.lua"] = "return {}\n",
  ["_lib/util.lua"] = [[
local cjson = require "cjson"
local u = { port = tonumber(os.getenv("REDIS_PORT")) }

-- query(req) → { name = value } (values percent-decoded)
function u.query(req)
  local q = {}
  for k, v in (req.query_string or ""):gmatch("([^&=]+)=([^&]*)") do
    q[k] = v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  end
  return q
end

-- A copy of v with the null sentinel as the string "NULL" (dump cannot
-- write a lightuserdata).
function u.show(v)
  if v == cjson.null then return "NULL" end
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = u.show(x) end
  return out
end
return u
]],
  ["index.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
  ["state.lua"] = src [[
return function(req) return { status = 200, body = dump(u.show(state)) } end
]],

  ------------------------------------------------------------ moonring.redis
  ["m/basic.lua"] = scenario [[
  local c = assert(redis.connect("127.0.0.1", u.port))
  local k = "basic:" .. q.k
  local r = {}
  r.set = { c:set(k, q.v) }
  r.get = { c:get(k) }
  r.missing_is_null = c:get(k .. ":missing") == redis.null
  r.incr = { c:incr(k .. ":n") }
  r.incrby = { c:incrby(k .. ":n", 41) }
  r.float = { c:incrbyfloat(k .. ":f", 1.5) }
  r.rpush = { c:rpush(k .. ":l", "a", "b", 3) }
  r.lrange = { c:lrange(k .. ":l", 0, -1) }
  r.hset = { c:hset(k .. ":h", "f1", "x", "f2", 2) }
  r.hmget = { c:hmget(k .. ":h", "f1", "nope", "f2") }
  r.wrongtype = { c:incr(k .. ":l") }
  r.unknown = { c:call("nosuchcommand", "x") }
  r.after_error = { c:get(k) }
  r.upper = { c:GET(k) }
  local bin = "a\r\nb\0c" .. string.rep("z", 70000)
  c:set(k .. ":bin", bin)
  r.binary_ok = c:get(k .. ":bin") == bin
  r.empty = { c:set(k .. ":e", ""), c:get(k .. ":e") }
  r.multi = { c:multi() }
  r.queued = { c:set(k .. ":m", "1"), c:incr(k .. ":l") }
  r.exec = { c:exec() }
  r.ping = { c:ping() }
  r.keepalive = { c:keepalive() }
  r.after_keepalive = { c:get(k) }
  return r
]],
  ["m/pipeline.lua"] = scenario [[
  local c = assert(redis.connect("127.0.0.1", u.port))
  local k = "pipe:" .. q.k
  local r = {}
  r.fn = { c:pipeline(function(p)
    r.queued_returns = table.pack(p:set(k, "v"))
    p:get(k)
    p:incr(k .. ":n")
    p:incr(k)                -- an error reply: not an integer
    p:get(k .. ":missing")
  end) }
  c:init_pipeline()
  for i = 1, 100 do c:rpush(k .. ":l", i) end
  c:lrange(k .. ":l", 98, -1)
  local out = c:commit_pipeline()
  r.hundred = { #out, out[1], out[100], out[101] }
  r.empty = { c:pipeline(function() end) }
  r.no_pipeline = { c:commit_pipeline() }
  r.raised = { pcall(c.pipeline, c, function(p) p:set(k, "never") error("boom-31", 0) end) }
  r.after_raise = { c:get(k) }
  c:init_pipeline()
  c:set(k, "cancelled")
  c:cancel_pipeline()
  r.after_cancel = { c:get(k) }
  c:close()
  return r
]],
  ["m/subscribe.lua"] = scenario [[
  -- a background task subscribes and collects q.n messages
  local st = { ready = false, got = {}, done = false }
  state[q.chan] = st
  moonring.background(function()
    local c = assert(redis.connect("127.0.0.1", u.port))
    local msgs = assert(c:subscribe(q.chan))
    st.ready = true
    for _ = 1, tonumber(q.n) do
      local m = msgs:take()
      if not m then break end
      st.got[#st.got + 1] = m
    end
    st.unsubscribe = { c:unsubscribe() }
    st.closed_after = msgs:take() == nil
    st.ping_after = { c:ping() }
    st.keepalive = { c:keepalive() }
    st.done = true
  end)
  return { started = q.chan }
]],
  ["m/publish.lua"] = scenario [[
  local c = assert(redis.connect("127.0.0.1", u.port))
  local r = { c:publish(q.chan, q.msg) }
  c:keepalive()
  return r
]],
  ["m/collect.lua"] = scenario [[
  -- the request's own task subscribes and answers with q.n messages
  local c = assert(redis.connect("127.0.0.1", u.port))
  local msgs, err
  if q.pattern then msgs, err = c:psubscribe(q.pattern) else msgs, err = c:subscribe(q.chan) end
  if not msgs then return { err = err } end
  if q.more then assert(c:subscribe(q.more) == msgs) end
  local got, deadline = {}, moonring.timeout(5)
  while #got < tonumber(q.n) do
    local op, m = moonring.select { msgs, deadline }
    if op == deadline then got.timed_out = true break end
    got[#got + 1] = m
  end
  got.get_while_subscribed = { c:get("x") }
  return got
]],
  ["m/close_subscribed.lua"] = scenario [[
  local c = assert(redis.connect("127.0.0.1", u.port))
  local msgs = assert(c:subscribe(q.chan))
  local taker = moonring.spawn(function() return msgs:take() end)
  moonring.sleep(0.05)
  c:close()
  return { taken = { taker:join() }, closed = msgs:closed(), get = { c:get("x") } }
]],
  ["m/pooled.lua"] = scenario [[
  local c = assert(redis.connect("127.0.0.1", u.port, { pool_size = 4 }))
  local r = { id = c:client("id"), reused = c:reused() }
  r.keepalive = { c:keepalive(10) }
  return r
]],
  ["m/unix.lua"] = scenario [[
  local c, err = redis.connect("unix:" .. q.path, { timeout = 2 })
  if not c then return { err = err } end
  local r = { set = { c:set("unix:k", "over a unix socket") }, get = { c:get("unix:k") } }
  r.keepalive = { c:keepalive() }
  local again = assert(redis.connect("unix:" .. q.path))
  r.reused = again:reused()
  again:close()
  return r
]],
  ["m/down.lua"] = scenario [[
  local t0 = moonring.now()
  local c, err = redis.connect("127.0.0.1", tonumber(q.port), { timeout = 5 })
  return { client = c == nil and "nil" or "client", err = err, elapsed = moonring.now() - t0 }
]],
  ["m/timeout.lua"] = scenario [[
  local c = assert(redis.connect("127.0.0.1", u.port, { timeout = tonumber(q.t) }))
  local t0 = moonring.now()
  local r = { blpop = { c:blpop("nothing:" .. q.k, 0) } }
  r.elapsed = moonring.now() - t0
  r.after = { c:get("x") }
  return r
]],
  ["m/db.lua"] = scenario [[
  local c3 = assert(redis.connect("127.0.0.1", u.port, { db = 3 }))
  local c0 = assert(redis.connect("127.0.0.1", u.port))
  local r = { set3 = { c3:set("db:" .. q.k, "three") } }
  r.get0 = { c0:get("db:" .. q.k) }
  c3:keepalive()
  c0:keepalive()
  local again = assert(redis.connect("127.0.0.1", u.port, { db = 3 }))
  r.reused3 = again:reused()
  r.get3 = { again:get("db:" .. q.k) }
  again:close()
  return r
]],
  ["m/auth.lua"] = scenario [[
  local port = tonumber(q.port)
  local r = {}
  local plain = assert(redis.connect("127.0.0.1", port))
  r.noauth = { plain:get("k") }
  plain:close()
  r.wrong = { redis.connect("127.0.0.1", port, { password = "wrong" }) }
  local c = assert(redis.connect("127.0.0.1", port, { password = q.password }))
  r.set = { c:set("auth:k", "yes") }
  r.get = { c:get("auth:k") }
  c:close()
  return r
]],
  ["m/misuse.lua"] = scenario [[
  local c = assert(redis.connect("127.0.0.1", u.port))
  local r = {}
  -- (no tail calls: the error names this file's line)
  local function try(f) return { pcall(function() local v = f() return v end) } end
  r.table_arg = try(function() return c:set("k", {}) end)
  r.nil_arg = try(function() return c:set("k", nil) end)
  r.no_self = try(function() return c.get("k") end)
  r.host = try(function() return redis.connect(6379) end)
  r.port = try(function() return redis.connect("127.0.0.1", "6379") end)
  r.option = try(function() return redis.connect("127.0.0.1", u.port, { timeuot = 1 }) end)
  r.timeout = try(function() return redis.connect("127.0.0.1", u.port, { timeout = "2" }) end)
  r.subscribe_none = try(function() return c:subscribe() end)
  -- one client, two tasks at once
  local t = moonring.spawn(function() return c:blpop("busy:" .. q.k, 1) end)
  moonring.sleep(0.05)
  r.busy = try(function() return c:get("k") end)
  r.first = { t:join() }
  c:close()
  return r
]],
  ["m/cancelled.lua"] = scenario [[
  -- a task cancelled while it waits for a reply: the connection is closed
  local c = assert(redis.connect("127.0.0.1", u.port))
  local t = moonring.spawn(function() return c:blpop("cancel:" .. q.k, 0) end)
  moonring.sleep(0.05)
  t:cancel()
  local r = { joined = { t:join() } }
  r.after = { c:get("x") }
  return r
]],

  ---------------------------------------------------- lua-resty-redis (Debian)
  ["r/basic.lua"] = resty [[
  local red = redis:new()
  red:set_timeout(2000)
  local r = { connect = { red:connect("127.0.0.1", u.port) } }
  local k = "resty:" .. q.k
  r.version = redis._VERSION
  r.source = debug.getinfo(redis.new, "S").source
  r.set = { red:set(k, q.v) }
  r.get = { red:get(k) }
  r.missing_is_null = red:get(k .. ":missing") == ngx.null
  r.null_is_moonrings = ngx.null == require("moonring.redis").null
  r.rpush = { red:rpush(k .. ":l", "a", "b") }
  r.wrongtype = { red:incr(k .. ":l") }
  r.hmset = { red:hmset(k .. ":h", { f = "v" }) }      -- uses 5.1's global unpack
  r.hgetall = { red:hgetall(k .. ":h") }
  red:init_pipeline()
  red:set(k .. ":p", "pv")
  red:get(k .. ":p")
  red:incr(k .. ":l")
  r.pipeline = { red:commit_pipeline() }
  r.reused = red:get_reused_times()
  r.keepalive = { red:set_keepalive(10000, 10) }
  return r
]],
  ["r/pooled.lua"] = resty [[
  local red = redis:new()
  red:set_timeout(2000)
  assert(red:connect("127.0.0.1", u.port))
  local r = { id = red:client("id"), reused = red:get_reused_times() }
  r.keepalive = { red:set_keepalive(10000, 10) }
  return r
]],
  ["r/collect.lua"] = resty [[
  local red = redis:new()
  red:set_timeout(5000)
  assert(red:connect("127.0.0.1", u.port))
  local r = { subscribe = { red:subscribe(q.chan) }, got = {} }
  for _ = 1, tonumber(q.n) do
    local m, err = red:read_reply()
    if not m then r.err = err break end
    r.got[#r.got + 1] = m
  end
  r.unsubscribe = { red:unsubscribe(q.chan) }
  r.keepalive = { red:set_keepalive(10000, 10) }
  return r
]],
  ["r/down.lua"] = resty [[
  local red = redis:new()
  red:set_timeout(5000)
  local t0 = moonring.now()
  local ok, err = red:connect("127.0.0.1", tonumber(q.port))
  return { ok = ok == nil and "nil" or ok, err = err, elapsed = moonring.now() - t0 }
]],

  ---------------------------------------------------------------- the shim
  ["n/shim.lua"] = scenario [[
  local ngx = require "moonring.ngx"
  local r = { global = _G.ngx == ngx }
  ngx.log(ngx.ERR, "shim-err-", 42, " ", nil, " ", true)
  ngx.log(ngx.INFO, "shim-info-7")
  ngx.log(ngx.WARN, "shim-warn-8")
  ngx.log(ngx.DEBUG, "shim-debug-9")
  r.bad_level = { pcall(ngx.log, "error", "x") }
  local t0 = ngx.now()
  ngx.sleep(0.2)
  r.slept = ngx.now() - t0
  r.now_type = math.type(ngx.now())
  r.time_type = math.type(ngx.time())
  r.time_near = math.abs(ngx.time() - os.time()) <= 1
  r.worker_id = ngx.worker.id()
  r.worker_pid_type = math.type(ngx.worker.pid())
  r.lua_version = ngx.config.ngx_lua_version
  r.levels = { ngx.STDERR, ngx.EMERG, ngx.ALERT, ngx.CRIT, ngx.ERR, ngx.WARN, ngx.NOTICE, ngx.INFO, ngx.DEBUG }
  r.table_new = { pcall(require, "table.new") }
  r.table_new_type = type(r.table_new[2])
  r.table_new = nil
  local clear = require "table.clear"
  local t = { 1, 2, x = 3 }
  clear(t)
  r.cleared = next(t) == nil
  r.missing = { pcall(require, "nginx.no_such_driver") }
  r.tcp_type = type(ngx.socket.tcp())
  -- light threads
  local a = ngx.thread.spawn(function(x) ngx.sleep(0.02) return x, "a" end, 7)
  r.wait_one = { ngx.thread.wait(a) }
  local f = ngx.thread.spawn(function() error("thread-fail-9", 0) end)
  r.wait_failed = { ngx.thread.wait(f) }
  local slow = ngx.thread.spawn(function() ngx.sleep(2) return "slow" end)
  local fast = ngx.thread.spawn(function() ngx.sleep(0.02) return "fast" end)
  r.wait_first = { ngx.thread.wait(slow, fast) }
  r.kill = { ngx.thread.kill(slow) }
  r.kill_again = { ngx.thread.kill(a) }
  return r
]],
}

local server_env

local function with_app(fn, args)
  return helper.with_server({ files = APP, args = args, env = server_env }, fn)
end

local function run(server, path)
  local res = helper.get(server.port, path)
  if res.status ~= 200 then
    error("GET " .. path .. " answered " .. res.status .. "\n" .. res.body .. "\n" .. server:stderr_text(), 2)
  end
  return helper.undump(res.body)
end

local serial = 0
local function unique(prefix)
  serial = serial + 1
  return string.format("%s%d-%d", prefix, os.time(), serial)
end

-- Sends GET path on a connection of its own, to read the response later.
local function start_get(port, path)
  local conn = helper.connect(port, { timeout = 10 * helper.slow })
  assert(conn:send(helper.build_request(port, "GET", path)))
  return conn
end

local rds

setup(function()
  rds = helper.redis_start()
  server_env = { REDIS_PORT = tostring(rds.port) }
end)

teardown(function()
  if rds then rds.stop() end
end)

-- Waits until Redis counts `n` subscribers on `chan`.
local function wait_subscribers(chan, n)
  return helper.eventually(function()
    local reply = rds:cmd("PUBSUB", "NUMSUB", chan)
    return reply[2] == n
  end, 3 * helper.slow)
end

describe("moonring.redis", function()
  it("sets and gets against a real redis-server; replies map to Lua values", function()
    with_app(function(server)
      local k = unique("k")
      local r = run(server, "/m/basic?k=" .. k .. "&v=hello")
      assert.are.same({ "OK" }, r.set)
      assert.are.same({ "hello" }, r.get)
      assert.are.equal("hello", rds:cmd("GET", "basic:" .. k))       -- seen from outside
      assert.is_true(r.missing_is_null)
      assert.are.same({ 1 }, r.incr)
      assert.are.same({ 42 }, r.incrby)
      assert.are.same({ "1.5" }, r.float)
      assert.are.same({ 3 }, r.rpush)
      assert.are.same({ { "a", "b", "3" } }, r.lrange)
      assert.are.same({ 2 }, r.hset)
      assert.are.same({ { "x", "NULL", "2" } }, r.hmget)
      assert.are.same({ "PONG" }, r.ping)
      assert.are.same({ "hello" }, r.upper)
      assert.is_true(r.binary_ok)
      assert.are.same({ "OK", "" }, r.empty)
      assert.are.same({ true }, r.keepalive)
      assert.are.same({ nil, "closed" }, r.after_keepalive)
    end)
  end)

  it("answers an error reply as nil and Redis's message; the client stays usable", function()
    with_app(function(server)
      local r = run(server, "/m/basic?k=" .. unique("e") .. "&v=v1")
      assert.is_nil(r.wrongtype[1])
      assert.are.equal("WRONGTYPE Operation against a key holding the wrong kind of value", r.wrongtype[2])
      assert.is_nil(r.unknown[1])
      assert.is_truthy(r.unknown[2]:match("^ERR unknown command"), r.unknown[2])
      assert.are.same({ "v1" }, r.after_error)
      -- MULTI/EXEC: an error inside the array is { nil, message }
      assert.are.same({ "OK" }, r.multi)
      assert.are.same({ "QUEUED", "QUEUED" }, r.queued)
      assert.are.same({ { "OK", { nil, "WRONGTYPE Operation against a key holding the wrong kind of value" } } },
        r.exec)
    end)
  end)

  it("pipelines: one result per command, error replies as { nil, message }", function()
    with_app(function(server)
      local k = unique("p")
      local r = run(server, "/m/pipeline?k=" .. k)
      assert.is_nil(r.queued_returns[1])      -- queued: nothing to tell yet
      assert.are.same({ { "OK", "v", 1, { nil, "ERR value is not an integer or out of range" }, "NULL", n = 5 } }, r.fn)
      assert.are.same({ 101, 1, 100, { "99", "100" } }, r.hundred)
      assert.are.same({ { n = 0 } }, r.empty)
      assert.are.same({ nil, "no pipeline" }, r.no_pipeline)
      assert.are.same({ false, "boom-31" }, r.raised)
      assert.are.same({ "v" }, r.after_raise)
      assert.are.same({ "v" }, r.after_cancel)
      assert.are.equal("100", rds:cmd("LINDEX", "pipe:" .. k .. ":l", -1))
    end)
  end)

  it("delivers published messages to a subscriber task, in order; unsubscribe ends it cleanly", function()
    with_app(function(server)
      local chan = unique("news")
      assert.are.same({ started = chan }, run(server, "/m/subscribe?chan=" .. chan .. "&n=3"))
      assert.is_truthy(helper.wait_state(server, function(st) return st[chan] and st[chan].ready end))
      assert.is_truthy(wait_subscribers(chan, 1))
      for i = 1, 3 do
        -- another request publishes, through the server
        assert.are.same({ 1 }, run(server, "/m/publish?chan=" .. chan .. "&msg=m" .. i))
      end
      local st, ok = helper.wait_state(server, function(s) return s[chan].done end, 3 * helper.slow)
      assert.is_true(ok, "the subscriber did not finish")
      assert.are.same({ { channel = chan, message = "m1" }, { channel = chan, message = "m2" },
                        { channel = chan, message = "m3" } }, st[chan].got)
      assert.are.same({ true }, st[chan].unsubscribe)
      assert.is_true(st[chan].closed_after)
      assert.are.same({ "PONG" }, st[chan].ping_after)
      assert.are.same({ true }, st[chan].keepalive)
      assert.is_truthy(wait_subscribers(chan, 0))
    end)
  end)

  it("lets one request wait for messages another request publishes; patterns too", function()
    with_app(function(server)
      local chan, more = unique("a"), unique("b")
      local conn = start_get(server.port, "/m/collect?n=2&chan=" .. chan .. "&more=" .. more)
      assert.is_truthy(wait_subscribers(chan, 1))
      assert.is_truthy(wait_subscribers(more, 1))
      assert.are.same({ 1 }, run(server, "/m/publish?chan=" .. more .. "&msg=second-channel"))
      assert.are.same({ 1 }, run(server, "/m/publish?chan=" .. chan .. "&msg=first-channel"))
      local got = helper.undump(conn:response().body)
      conn:close()
      assert.are.same({ channel = more, message = "second-channel" }, got[1])
      assert.are.same({ channel = chan, message = "first-channel" }, got[2])
      assert.is_nil(got.timed_out)
      assert.are.same({ nil, "subscribed (only subscribe and unsubscribe until the subscription ends)" },
        got.get_while_subscribed)
      -- the request is over: its subscription's connection was closed
      assert.is_truthy(wait_subscribers(chan, 0))

      local pattern = unique("pat") .. ".*"
      conn = start_get(server.port, "/m/collect?n=1&pattern=" .. pattern)
      assert.is_truthy(helper.eventually(function() return rds:cmd("PUBSUB", "NUMPAT") >= 1 end))
      local target = pattern:sub(1, -2) .. "x"
      assert.are.same({ 1 }, run(server, "/m/publish?chan=" .. target .. "&msg=by-pattern"))
      got = helper.undump(conn:response().body)
      conn:close()
      assert.are.same({ pattern = pattern, channel = target, message = "by-pattern" }, got[1])
    end)
  end)

  it("closes the messages channel when the subscribed client is closed", function()
    with_app(function(server)
      local r = run(server, "/m/close_subscribed?chan=" .. unique("c"))
      assert.are.same({}, r.taken)          -- take returned nil: closed and empty
      assert.is_true(r.closed)
      assert.are.same({ nil, "closed" }, r.get)
    end)
  end)

  it("reuses a pooled connection: the same Redis client, reused() counting", function()
    with_app(function(server)
      local first = run(server, "/m/pooled")
      local second = run(server, "/m/pooled")
      local third = run(server, "/m/pooled")
      assert.are.equal(0, first.reused)
      assert.are.same({ 1, 2 }, { second.reused, third.reused })
      assert.are.equal(first.id, second.id)
      assert.are.equal(first.id, third.id)
      assert.are.same({ true }, first.keepalive)
    end)
  end)

  it("never hands out a pooled connection Redis has closed meanwhile", function()
    with_app(function(server)
      local first = run(server, "/m/pooled")
      assert.are.equal(1, rds:cmd("CLIENT", "KILL", "ID", first.id))
      socket.sleep(0.1)
      local second = run(server, "/m/pooled")
      assert.are.equal(0, second.reused)
      assert.are_not.equal(first.id, second.id)
      assert.are.same({ true }, second.keepalive)
    end)
  end)

  it("connects over a unix socket (\"unix:/path\", no port)", function()
    local path = helper.tmpdir("sock") .. "/redis.sock"
    local over_unix = helper.redis_start { args = { "--unixsocket", path } }
    local ok, err = pcall(with_app, function(server)
      local r = run(server, "/m/unix?path=" .. path)
      assert.is_nil(r.err)
      assert.are.same({ "OK" }, r.set)
      assert.are.same({ "over a unix socket" }, r.get)
      assert.are.same({ true }, r.keepalive)
      assert.are.equal(1, r.reused)
    end)
    over_unix.stop()
    assert(ok, err)
  end)

  it("keeps connections to different databases in different pools", function()
    with_app(function(server)
      local k = unique("d")
      local r = run(server, "/m/db?k=" .. k)
      assert.are.same({ "OK" }, r.set3)
      assert.are.same({ "NULL" }, r.get0)
      assert.are.equal(1, r.reused3)
      assert.are.same({ "three" }, r.get3)
    end)
  end)

  it("authenticates with opts.password; errors come back as nil, message", function()
    local locked = helper.redis_start { password = "s3cret" }
    local ok, err = pcall(with_app, function(server)
      local r = run(server, "/m/auth?port=" .. locked.port .. "&password=s3cret")
      assert.is_nil(r.noauth[1])
      assert.is_truthy(r.noauth[2]:match("^NOAUTH"), r.noauth[2])
      assert.is_nil(r.wrong[1])
      assert.is_truthy(r.wrong[2]:match("^WRONGPASS"), r.wrong[2])
      assert.are.same({ "OK" }, r.set)
      assert.are.same({ "yes" }, r.get)
    end)
    locked.stop()
    assert(ok, err)
  end)

  it("answers nil, \"connection refused\" at once when Redis is down", function()
    with_app(function(server)
      local r = run(server, "/m/down?port=" .. helper.free_port())
      assert.are.same({ "nil", "connection refused" }, { r.client, r.err })
      assert.is_true(r.elapsed < 1 * helper.slow, "took " .. r.elapsed .. " s")
    end)
  end)

  it("gives up a reply after the client's timeout, closes the connection, serves others meanwhile", function()
    with_app(function(server)
      local conn = start_get(server.port, "/m/timeout?t=1&k=" .. unique("t"))
      socket.sleep(0.1)
      local t0 = helper.now()
      helper.assert_serves(server.port, "/")
      assert.is_true(helper.now() - t0 < 0.5 * helper.slow, "another client waited for the Redis call")
      local r = helper.undump(conn:response().body)
      conn:close()
      assert.are.same({ nil, "timeout" }, r.blpop)
      assert.is_true(r.elapsed >= 0.8 and r.elapsed < 2 * helper.slow, "elapsed " .. r.elapsed)
      assert.are.same({ nil, "closed" }, r.after)
    end)
  end)

  it("closes the connection of a task cancelled mid-call", function()
    with_app(function(server)
      local r = run(server, "/m/cancelled?k=" .. unique("x"))
      assert.are.equal("cancelled", r.joined[2])
      assert.are.same({ nil, "closed" }, r.after)
      -- Redis saw the connection go: nobody is left blocked in BLPOP
      assert.is_truthy(helper.eventually(function()
        return rds:cmd("INFO", "clients"):match("blocked_clients:(%d+)") == "0"
      end), "the blocked connection was not closed")
    end)
  end)

  it("raises on misuse, with a message naming the mistake", function()
    with_app(function(server)
      local r = run(server, "/m/misuse?k=" .. unique("u"))
      local function raised(t, pattern)
        assert.is_false(t[1])
        assert.is_truthy(tostring(t[2]):find(pattern), tostring(t[2]))
      end
      raised(r.table_arg, "argument 2 of SET is a table %(expected a string or a number%)")
      raised(r.nil_arg, "argument 2 of SET is a nil")
      raised(r.no_self, "GET must be called on a client")
      raised(r.host, "expected a host %(string%), got number")
      raised(r.port, "expected a port %(integer%), got 6379")
      raised(r.option, "unknown option timeuot")
      raised(r.timeout, "option timeout must be a number, got string")
      raised(r.subscribe_none, "subscribe: expected at least one channel name")
      raised(r.busy, "GET while another task waits on this client")
      -- the misuse site is the caller's line, not the library's
      for _, t in ipairs { r.table_arg, r.no_self, r.host, r.option, r.subscribe_none, r.busy } do
        assert.is_truthy(tostring(t[2]):match("misuse%.lua:%d+: moonring%.redis"), tostring(t[2]))
      end
      assert.are.same({ "NULL" }, r.first)  -- BLPOP timed out after 1 s: nil reply
    end)
  end)
end)

describe("lua-resty-redis (Debian's nginx.redis, unchanged) through moonring.ngx", function()
  it("loads from the Lua 5.1 path and sets and gets against a real redis-server", function()
    with_app(function(server)
      local k = unique("r")
      local r = run(server, "/r/basic?k=" .. k .. "&v=resty-value")
      assert.are.same({ 1 }, r.connect)
      assert.are.equal("0.27", r.version)
      assert.are.equal("@/usr/share/lua/5.1/nginx/redis.lua", r.source)
      assert.are.same({ "OK" }, r.set)
      assert.are.same({ "resty-value" }, r.get)
      assert.are.equal("resty-value", rds:cmd("GET", "resty:" .. k))
      assert.is_true(r.missing_is_null)
      assert.is_true(r.null_is_moonrings)
      assert.are.same({ false, "WRONGTYPE Operation against a key holding the wrong kind of value" }, r.wrongtype)
      assert.are.same({ "OK" }, r.hmset)
      assert.are.same({ { "f", "v" } }, r.hgetall)
      assert.are.same({ { "OK", "pv", { false, "WRONGTYPE Operation against a key holding the wrong kind of value" } } },
        r.pipeline)
      assert.are.equal(0, r.reused)
      assert.are.same({ 1 }, r.keepalive)
    end)
  end)

  it("reuses pooled connections (get_reused_times, the same Redis client)", function()
    with_app(function(server)
      local first = run(server, "/r/pooled")
      local second = run(server, "/r/pooled")
      assert.are.equal(0, first.reused)
      assert.are.equal(1, second.reused)
      assert.are.equal(first.id, second.id)
      assert.are.same({ 1 }, second.keepalive)
    end)
  end)

  it("receives published messages with subscribe and read_reply", function()
    with_app(function(server)
      local chan = unique("rs")
      local conn = start_get(server.port, "/r/collect?n=2&chan=" .. chan)
      assert.is_truthy(wait_subscribers(chan, 1))
      assert.are.same({ 1 }, run(server, "/m/publish?chan=" .. chan .. "&msg=one"))
      assert.are.equal(1, rds:cmd("PUBLISH", chan, "two"))
      local r = helper.undump(conn:response().body)
      conn:close()
      assert.are.same({ { "subscribe", chan, 1 } }, r.subscribe)
      assert.are.same({ { "message", chan, "one" }, { "message", chan, "two" } }, r.got)
      assert.are.same({ { "unsubscribe", chan, 0 } }, r.unsubscribe)
      assert.are.same({ 1 }, r.keepalive)
    end)
  end)

  it("answers nil, \"connection refused\" at once when Redis is down", function()
    with_app(function(server)
      local r = run(server, "/r/down?port=" .. helper.free_port())
      assert.are.same({ "nil", "connection refused" }, { r.ok, r.err })
      assert.is_true(r.elapsed < 1 * helper.slow, "took " .. r.elapsed .. " s")
    end)
  end)
end)

describe("moonring.ngx", function()
  it("provides the documented ngx.* on moonring's primitives", function()
    with_app(function(server)
      local r = run(server, "/n/shim")
      assert.is_true(r.global)
      assert.is_false(r.bad_level[1])
      assert.is_truthy(r.bad_level[2]:find("ngx.log: bad log level error", 1, true), r.bad_level[2])
      -- (a libuv timer counts from the loop turn's start: it may end early
      -- by the time the turn had already taken)
      assert.is_true(r.slept >= 0.1 and r.slept < 1 * helper.slow, "slept " .. r.slept)
      assert.are.same({ "float", "integer", true }, { r.now_type, r.time_type, r.time_near })
      assert.are.equal(0, r.worker_id)
      assert.are.equal("integer", r.worker_pid_type)
      assert.are.equal(10023, r.lua_version)
      assert.are.same({ 0, 1, 2, 3, 4, 5, 6, 7, 8 }, r.levels)
      assert.are.equal("function", r.table_new_type)
      assert.is_true(r.cleared)
      assert.is_false(r.missing[1])
      assert.is_truthy(r.missing[2]:find("/usr/share/lua/5.1/nginx/no_such_driver.lua", 1, true), r.missing[2])
      assert.are.equal("userdata", r.tcp_type)
      assert.are.same({ true, 7, "a" }, r.wait_one)
      assert.are.same({ false, "thread-fail-9" }, r.wait_failed)
      assert.are.same({ true, "fast" }, r.wait_first)
      assert.are.same({ true }, r.kill)
      assert.are.same({ nil, "already terminated" }, r.kill_again)
      -- ngx.log lines in the error log, with the caller's file and line
      local text = server:stderr_text()
      assert.is_truthy(text:find("%[error%] %[lua%] shim%.lua:%d+: shim%-err%-42 nil true"), text)
      assert.is_truthy(text:find("%[info%] %[lua%] shim%.lua:%d+: shim%-info%-7"), text)
      assert.is_truthy(text:find("%[error%] %[lua%] shim%.lua:%d+: shim%-warn%-8"), text)
      assert.is_falsy(text:find("shim-debug-9", 1, true), text)     -- DEBUG: --dev only
    end)
  end)
end)
