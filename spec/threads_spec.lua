-- moonring.run_in_thread (docs/io.md, "Thread pool"): require(module)[fn](...)
-- in a Lua state of its own on libuv's pool, the calling task parked and the
-- loop serving meanwhile. Arguments and results are copied; errors,
-- timeouts, a full queue and misuse behave as documented; a blocking Debian
-- library (luasocket's sleep, lua-sql-sqlite3) runs there without delaying
-- other clients.
local helper = require "helper"

-- Route source with `moonring` and `dump` in scope.
local function src(body)
  return "local moonring = require \"moonring\"\n" .. helper.DUMP .. body
end

-- A route answering dump(scenario(req)).
local function scenario(body)
  return src("local function scenario(req)\n" .. body .. "\nend\n" .. [[
return function(req)
  return { status = 200, body = dump(scenario(req)) }
end
]])
end

-- The module the jobs run: an app module under APP (found through the
-- thread state's package.path).
local WORK = [[
local socket = require "socket"
local M = {}

function M.echo(...) return ... end

-- what the thread saw: the count and math.type / type of each argument
function M.types(...)
  local out = { n = select("#", ...) }
  for i = 1, out.n do
    local v = select(i, ...)
    out[i] = math.type(v) or type(v)
  end
  return out
end

function M.sleep(s) socket.sleep(s); return "slept", s end
function M.spin_forever() local n = 0; while true do n = n + 1 end end
function M.spin_caught()
  while true do pcall(function() while true do end end) end
end
function M.fail() error("thread-boom-5c1e") end
function M.fail_table() error({ code = 1 }) end
function M.returns_function() return 1, print end
function M.returns_cycle() local t = {}; t.self = t; return t end
function M.in_thread() return package.path:match("^[^;]*"), type(moonring) end
M.not_a_function = 42
return M
]]

local COUNTER = [[
local n = 0
return { next = function() n = n + 1; return n end }
]]

local APP = {
  ["_lib/work.lua"] = WORK,
  ["_lib/counter.lua"] = COUNTER,
  ["hello.lua"] = [[return function(req) return { status = 200, body = "hello\n" } end]],

  ["roundtrip.lua"] = scenario [[
  local nested = { 1, 2.0, "three", { deep = { deeper = { true, false } } }, [10] = "ten",
                   [2.5] = "float key", [true] = "bool key", x = -0.5, big = math.maxinteger }
  local seen = moonring.run_in_thread("_lib.work", "types", 1, 1.0, "s", nil, true, nested, nil)
  local back = table.pack(moonring.run_in_thread("_lib.work", "echo", 1, 1.0, "s\0z", nil, false,
                                                  nested, nil))
  local types = {}
  for i = 1, back.n do types[i] = math.type(back[i]) or type(back[i]) end
  local none = table.pack(moonring.run_in_thread("_lib.work", "echo"))
  return { seen = seen, back = back, types = types, none = none.n,
           same_table = back[6] == nested,
           inner_types = { math.type(back[6][1]), math.type(back[6][2]), math.type(back[6].big) } }
]],

  ["errors.lua"] = scenario [[
  local r = {}
  r.fail = { moonring.run_in_thread("_lib.work", "fail") }
  r.fail_table = { moonring.run_in_thread("_lib.work", "fail_table") }
  r.no_module = { moonring.run_in_thread("_lib.nope", "x") }
  r.no_function = { moonring.run_in_thread("_lib.work", "nothing") }
  r.not_function = { moonring.run_in_thread("_lib.work", "not_a_function") }
  r.result_function = { moonring.run_in_thread("_lib.work", "returns_function") }
  r.result_cycle = { moonring.run_in_thread("_lib.work", "returns_cycle") }
  r.after = { moonring.run_in_thread("_lib.work", "echo", "still works") }
  return r
]],

  ["misuse.lua"] = scenario [[
  local function try(...) return select(2, pcall(moonring.run_in_thread, ...)) end
  local cycle = {}
  cycle[1] = { cycle }
  return {
    module = try(42, "echo"),
    module_table = try({ timeout = 1 }, "echo"),
    timeout = try({ "_lib.work", timeout = -1 }, "echo"),
    fn = try("_lib.work", 7),
    arg_function = try("_lib.work", "echo", 1, print),
    arg_nested = try("_lib.work", "echo", { a = { b = { coroutine.create(print) } } }),
    arg_cycle = try("_lib.work", "echo", "x", cycle),
    arg_key = try("_lib.work", "echo", { [{}] = 1 }),
  }
]],

  ["where.lua"] = scenario [[
  local first, mr = moonring.run_in_thread("_lib.work", "in_thread")
  return { first = first, moonring = mr }
]],

  -- a job that outlives its timeout; the next call works again
  ["timeout.lua"] = scenario [[
  local t0 = moonring.now()
  local a, b = moonring.run_in_thread({ "_lib.work", timeout = 0.3 }, "spin_forever")
  local t1 = moonring.now()
  local c, d = moonring.run_in_thread({ "_lib.work", timeout = 0.3 }, "spin_caught")
  local t2 = moonring.now()
  local e, f = moonring.run_in_thread({ "_lib.work", timeout = 0.3 }, "sleep", 1)
  local t3 = moonring.now()
  local after = moonring.run_in_thread({ "_lib.work", timeout = 5 }, "echo", "after")
  return { a = a, b = b, spin = t1 - t0, c = c, d = d, caught = t2 - t1, e = e, f = f,
           sleep = t3 - t2, after = after, waited_after = moonring.now() - t3 }
]],

  -- `n` jobs sleeping `s` seconds each, started together
  ["parallel.lua"] = scenario [[
  local n, s = req.query_string:match("n=(%d+)&s=([%d.]+)")
  n, s = tonumber(n), tonumber(s)
  local t0 = moonring.now()
  local tasks = {}
  for i = 1, n do
    tasks[i] = moonring.spawn(moonring.run_in_thread, "_lib.work", "sleep", s)
  end
  local ok = 0
  for i = 1, n do if tasks[i]:join() == "slept" then ok = ok + 1 end end
  return { ok = ok, elapsed = moonring.now() - t0 }
]],

  -- one job runs, 1024 wait, the next is refused; then all are cancelled
  ["full.lua"] = scenario [[
  local tasks = {}
  for i = 1, 1026 do
    tasks[i] = moonring.spawn(moonring.run_in_thread, { "_lib.work", timeout = 10 }, "sleep", 0.3)
  end
  moonring.sleep(0.1)
  local a, b = tasks[1026]:join()
  local statuses = { [tasks[1]:status()] = true, [tasks[1025]:status()] = true }
  for i = 1, 1025 do tasks[i]:cancel() end
  return { a = a, b = b, statuses = statuses }
]],

  -- a job that blocks its thread in C (luasocket)
  ["block.lua"] = src [[
return function(req)
  local s = tonumber(req.query_string or "1.5")
  local r, slept = moonring.run_in_thread("_lib.work", "sleep", s)
  return { status = 200, body = tostring(r) .. " " .. tostring(slept) }
end
]],

  -- a job that never ends by itself
  ["spin.lua"] = src [[
return function(req)
  return { status = 200, body = tostring(moonring.run_in_thread("_lib.work", "spin_forever")) }
end
]],

  -- --threads jobs blocking in C, then a file call: libuv's pool has room
  ["starve.lua"] = scenario [[
  local n = tonumber(req.query_string)
  local tasks = {}
  for i = 1, n do tasks[i] = moonring.spawn(moonring.run_in_thread, "_lib.work", "sleep", 1) end
  moonring.sleep(0.2)
  local t0 = moonring.now()
  local st = moonring.fs.stat(".")
  local elapsed = moonring.now() - t0
  for i = 1, n do tasks[i]:join() end
  return { type = st and st.type, elapsed = elapsed }
]],

  -- from a coroutine the handler made, and where it cannot wait
  ["nested.lua"] = scenario [[
  local gen = coroutine.wrap(function()
    coroutine.yield(moonring.run_in_thread("_lib.work", "echo", "from a generator"))
  end)
  local in_sort = select(2, pcall(table.sort, { 2, 1 }, function(a, b)
    moonring.run_in_thread("_lib.work", "echo")
    return a < b
  end))
  return { gen = gen(), in_sort = in_sort }
]],

  ["counter.lua"] = src [[
return function(req)
  return { status = 200, body = tostring(moonring.run_in_thread("_lib.counter", "next")) }
end
]],
}

local function get_dump(server, path, opts)
  local res = helper.get(server.port, path, opts)
  assert.are.equal(200, res.status, res.body)
  return helper.undump(res.body)
end

describe("moonring.run_in_thread", function()
  it("copies arguments and results: nesting, integers vs floats, nil holes", function()
    helper.with_server({ files = APP }, function(server)
      local r = get_dump(server, "/roundtrip")
      -- what the thread received
      assert.are.equal(7, r.seen.n)
      assert.are.same({ "integer", "float", "string", "nil", "boolean", "table", "nil" },
        { r.seen[1], r.seen[2], r.seen[3], r.seen[4], r.seen[5], r.seen[6], r.seen[7] })
      -- what came back
      assert.are.equal(7, r.back.n)
      assert.are.same({ "integer", "float", "string", "nil", "boolean", "table", "nil" },
        { r.types[1], r.types[2], r.types[3], r.types[4], r.types[5], r.types[6], r.types[7] })
      assert.are.equal("s\0z", r.back[3])
      assert.is_false(r.back[5])
      local t = r.back[6]
      assert.are.equal("three", t[3])
      assert.are.same({ true, false }, t[4].deep.deeper)
      assert.are.equal("ten", t[10])
      assert.are.equal("float key", t[2.5])
      assert.are.equal("bool key", t[true])
      assert.are.equal(-0.5, t.x)
      assert.are.equal(math.maxinteger, t.big)
      assert.are.same({ "integer", "float", "integer" }, r.inner_types)
      assert.is_false(r.same_table)   -- a copy, not the table itself
      assert.are.equal(0, r.none)     -- no results is no results
    end)
  end)

  it("loads app modules under APP, in a state without the server's modules", function()
    helper.with_server({ files = APP }, function(server)
      local r = get_dump(server, "/where")
      assert.are.equal(server.app .. "/?.lua", r.first)
      assert.are.equal("nil", r.moonring)
    end)
  end)

  it("finds modules next to APP when APP is one Lua file", function()
    local files = {
      ["main.lua"] = src [[
return function(req)
  local a, b = moonring.run_in_thread("helpers", "add", 2, 3)
  return { status = 200, body = tostring(a) .. " " .. tostring(b) }
end
]],
      ["helpers.lua"] = "return { add = function(a, b) return a + b, 'added' end }\n",
    }
    helper.with_server({ files = files, entry = "main.lua" }, function(server)
      assert.are.equal("5 added", helper.get(server.port, "/").body)
    end)
  end)

  it("returns nil, message for errors in the thread and for results that cannot be copied", function()
    helper.with_server({ files = APP }, function(server)
      local r = get_dump(server, "/errors")
      assert.is_nil(r.fail[1])
      assert.matches("work%.lua:%d+: thread%-boom%-5c1e", r.fail[2])
      assert.are.same({ nil, "(error object is a table value)" }, { r.fail_table[1], r.fail_table[2] })
      assert.matches("module '_lib.nope' not found", r.no_module[2], 1, true)
      assert.are.equal("module '_lib.work' has no function 'nothing'", r.no_function[2])
      assert.are.equal("module '_lib.work' has no function 'not_a_function'", r.not_function[2])
      assert.matches("result #2 of _lib.work.returns_function: a function cannot be copied",
        r.result_function[2], 1, true)
      assert.matches("result #1 of _lib.work.returns_cycle: a table that contains itself",
        r.result_cycle[2], 1, true)
      assert.are.same({ "still works" }, r.after)
    end)
  end)

  it("raises a clear error naming the argument on misuse", function()
    helper.with_server({ files = APP }, function(server)
      local r = get_dump(server, "/misuse")
      assert.matches("bad argument #1 .*module name %(string%)", r.module)
      assert.matches("bad argument #1 .*module name %(string%)", r.module_table)
      assert.matches("bad argument #1 .*timeout must be a number of seconds > 0", r.timeout)
      assert.matches("bad argument #2 .*function name %(string%) expected, got number", r.fn)
      assert.matches("bad argument #4 .*a function cannot be copied", r.arg_function)
      assert.matches("bad argument #3 .*a coroutine cannot be copied", r.arg_nested)
      assert.matches("bad argument #4 .*a table that contains itself", r.arg_cycle)
      assert.matches("bad argument #3 .*table key that is not a string, number or boolean", r.arg_key)
    end)
  end)

  it("a blocking call in the pool does not delay a concurrent GET /hello", function()
    helper.with_server({ files = APP }, function(server)
      local blocked = helper.connect(server.port)
      local started = helper.now()
      blocked:send(helper.build_request(server.port, "GET", "/block?1.5"))
      helper.sleep(0.2)
      local worst = 0
      for _ = 1, 5 do
        local t0 = helper.now()
        local res = helper.get(server.port, "/hello")
        worst = math.max(worst, helper.now() - t0)
        assert.are.equal("hello\n", res.body)
      end
      assert.is_true(helper.now() - started < 1.4, "the /hello requests took as long as the job")
      assert.is_true(worst < 0.5 * helper.slow, "GET /hello took " .. worst .. " s")
      local res = blocked:response({ timeout = 5 * helper.slow })
      assert.are.equal(200, res.status)
      assert.are.equal("slept 1.5", res.body)
      assert.is_true(helper.now() - started >= 1.45)
    end)
  end)

  it("runs at most --threads jobs at once, the others wait their turn", function()
    helper.with_server({ files = APP, args = { "--threads", "2" } }, function(server)
      local two = get_dump(server, "/parallel?n=2&s=0.4")
      assert.are.equal(2, two.ok)
      assert.is_true(two.elapsed < 0.75 * helper.slow, "2 jobs on 2 threads took " .. two.elapsed)
      local three = get_dump(server, "/parallel?n=3&s=0.4")
      assert.are.equal(3, three.ok)
      assert.is_true(three.elapsed >= 0.75, "3 jobs on 2 threads took only " .. three.elapsed)
    end)
    helper.with_server({ files = APP, args = { "--threads", "1" } }, function(server)
      local two = get_dump(server, "/parallel?n=2&s=0.3")
      assert.are.equal(2, two.ok)
      assert.is_true(two.elapsed >= 0.55, "2 jobs on 1 thread took only " .. two.elapsed)
    end)
  end)

  it("refuses a job past 1024 waiting with nil, \"thread pool queue full\"", function()
    helper.with_server({ files = APP, args = { "--threads", "1" } }, function(server)
      local r = get_dump(server, "/full", { timeout = 10 * helper.slow })
      assert.are.same({ nil, "thread pool queue full" }, { r.a, r.b })
      assert.are.same({ waiting = true }, r.statuses)
      -- the cancelled jobs left the queue: the pool serves again at once
      -- (after the one job that ran)
      local t0 = helper.now()
      assert.are.equal("slept 0.01", helper.get(server.port, "/block?0.01").body)
      assert.is_true(helper.now() - t0 < 2 * helper.slow)
    end)
  end)

  it("times out with nil, \"timeout\": Lua is stopped, a blocking C call is waited for", function()
    helper.with_server({ files = APP, args = { "--threads", "1" } }, function(server)
      local r = get_dump(server, "/timeout", { timeout = 10 * helper.slow })
      assert.are.same({ nil, "timeout" }, { r.a, r.b })
      -- (timers count from the loop's cached time: a little under 0.3 s of wall clock is fine)
      assert.is_true(r.spin >= 0.25 and r.spin < 1 * helper.slow, "spin: " .. r.spin)
      -- a loop that catches the error is stopped too
      assert.are.same({ nil, "timeout" }, { r.c, r.d })
      assert.is_true(r.caught < 1 * helper.slow, "caught: " .. r.caught)
      -- the blocked call times out for its caller, but keeps its (only)
      -- slot until socket.sleep returns: the next job waits for it
      assert.are.same({ nil, "timeout" }, { r.e, r.f })
      assert.is_true(r.sleep < 0.8 * helper.slow, "sleep: " .. r.sleep)
      assert.are.equal("after", r.after)
      assert.is_true(r.waited_after >= 0.5, "the next job did not wait: " .. r.waited_after)
    end)
  end)

  it("a request cancelled while its job runs does not crash; the next request works", function()
    helper.with_server({ files = APP, args = { "--threads", "1", "--request-timeout", "0.3" } }, function(server)
      -- the client leaves
      local c = helper.connect(server.port)
      c:send(helper.build_request(server.port, "GET", "/block?0.6"))
      helper.sleep(0.1)
      c:close()
      -- the deadline passes
      local res = helper.get(server.port, "/block?0.6")
      assert.are.equal(504, res.status)
      assert.are.equal("hello\n", helper.get(server.port, "/hello").body)
      -- the pool is free again once the abandoned jobs ended
      local r = helper.eventually(function()
        local x = helper.get(server.port, "/block?0.01")
        return x.status == 200 and x.body
      end, 5 * helper.slow)
      assert.are.equal("slept 0.01", r)
    end)
  end)

  it("works from a coroutine a handler made; refuses to wait where it cannot, or outside a task", function()
    helper.with_server({ files = APP }, function(server)
      local r = get_dump(server, "/nested")
      assert.are.equal("from a generator", r.gen)
      assert.matches("moonring.run_in_thread cannot wait here", r.in_sort, 1, true)
    end)
    local files = {
      ["index.lua"] = src [[
moonring.run_in_thread("_lib.work", "echo")
return function(req) return { status = 200 } end
]],
      ["_lib/work.lua"] = WORK,
    }
    local dir = helper.app(files)
    local r = helper.run { "--port", "0", dir }
    assert.are.equal(1, r.status)
    assert.truthy(r.stderr:find("moonring.run_in_thread: not inside a task", 1, true), r.stderr)
  end)

  it("keeps libuv's pool larger than --threads: file calls are not starved", function()
    helper.with_server({ files = APP, args = { "--threads", "4" } }, function(server)
      local r = get_dump(server, "/starve?4", { timeout = 10 * helper.slow })
      assert.are.equal("directory", r.type)
      assert.is_true(r.elapsed < 0.5 * helper.slow, "fs.stat waited " .. r.elapsed .. " s")
    end)
  end)

  it("stops a running job's Lua at shutdown, so the server exits", function()
    helper.with_server({ files = APP, args = { "--grace", "0.3" } }, function(server)
      local c = helper.connect(server.port)
      c:send(helper.build_request(server.port, "GET", "/spin"))
      helper.sleep(0.2)
      local t0 = helper.now()
      assert.are.equal(0, server:stop())
      assert.is_true(helper.now() - t0 < 3 * helper.slow, "exit took " .. (helper.now() - t0))
      assert.is_falsy(server.killed)
    end)
  end)

  it("reuses thread states, and drops them when the app reloads", function()
    local app = helper.app(APP)
    local server = helper.start { app = app, args = { "--threads", "1" } }
    finally(function() server:stop() end)
    assert.are.equal("1", helper.get(server.port, "/counter").body)
    assert.are.equal("2", helper.get(server.port, "/counter").body)
    assert.are.equal("3", helper.get(server.port, "/counter").body)
    helper.write_file(app .. "/_lib/counter.lua", [[
local n = 100
return { next = function() n = n + 1; return n end }
]])
    server:signal("HUP")
    assert.truthy(server:wait_stderr("reloaded"))
    assert.are.equal("101", helper.get(server.port, "/counter").body)
    assert.are.equal("102", helper.get(server.port, "/counter").body)
  end)

  it("runs lua-sql-sqlite3 (a blocking Debian library) from a handler", function()
    local dir = helper.tmpdir("sqlite")
    local files = {
      ["_lib/db.lua"] = [[
local driver = require "luasql.sqlite3"
local M = {}
function M.store(path, names)
  local env = assert(driver.sqlite3())
  local con = assert(env:connect(path))
  assert(con:execute("CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT, score REAL)"))
  for i, name in ipairs(names) do
    assert(con:execute(string.format("INSERT INTO people (name, score) VALUES ('%s', %f)",
      con:escape(name), i * 1.5)))
  end
  local cur = assert(con:execute("SELECT id, name, score FROM people ORDER BY id"))
  local rows = {}
  local row = cur:fetch({}, "a")
  while row do
    rows[#rows + 1] = { id = math.tointeger(tonumber(row.id)), name = row.name, score = tonumber(row.score) }
    row = cur:fetch({}, "a")
  end
  cur:close()
  con:close()
  env:close()
  return rows
end
return M
]],
      ["db.lua"] = scenario(string.format([[
  local rows, err = moonring.run_in_thread("_lib.db", "store", %q, { "ada", "o'brien", "grace" })
  return { rows = rows, err = err }
]], dir .. "/test.db")),
    }
    helper.with_server({ files = files }, function(server)
      local r = get_dump(server, "/db")
      assert.is_nil(r.err)
      assert.are.same({
        { id = 1, name = "ada", score = 1.5 },
        { id = 2, name = "o'brien", score = 3.0 },
        { id = 3, name = "grace", score = 4.5 },
      }, r.rows)
      local again = get_dump(server, "/db")
      assert.are.equal(6, #again.rows)
    end)
    assert.truthy(helper.read_file(dir .. "/test.db"))
  end)

  it("shows --threads in --help and refuses a bad value", function()
    local r = helper.run { "--help" }
    assert.truthy(r.stdout:find("--threads N", 1, true))
    local bad = helper.run { "--threads", "0", "handlers" }
    assert.are.equal(2, bad.status)
    assert.truthy(bad.stderr:find("--threads expects 1-1000", 1, true))
  end)
end)
