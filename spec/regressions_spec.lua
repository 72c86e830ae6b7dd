-- Regressions from the review of the async core: one spec per bug found, each
-- driving a real server with the reviewer's fixture (or a close copy of it).
-- Each one fails on the server before the fixes: a sanitizer report, a crash,
-- a hang, a wrong status, a truncated body or a spurious log line.
local helper = require "helper"

local MIB = 1024 * 1024

-- GET with a bounded wait: fails the spec with `what` when no complete
-- response arrives within `secs`.
local function get_within(server, path, secs, what)
  local text, info = helper.raw(server.port,
    helper.build_request(server.port, "GET", path), { timeout = secs })
  local res = helper.parse(text)[1]
  if not res then
    local why = ""
    local status = server:exit_status()
    if not status and info.ended == "closed" then status = server:wait(2 * helper.slow) end
    if status then                      -- it died: show why (a sanitizer report, say)
      local log = server:stderr_text()
      local at = log:find("ERROR: %a+Sanitizer") or log:find("runtime error:", 1, true) or math.max(1, #log - 3000)
      why = string.format("\nthe server exited with status %d; its stderr:\n%s", status, log:sub(at, at + 3000))
    end
    error(string.format("%s: GET %s got no complete response within %.0f s (connection %s)\nraw: %q%s",
      what or "request", path, secs, info.ended, text:sub(1, 400), why), 2)
  end
  res.raw, res.elapsed = text, info.elapsed
  return res
end

-- Reads from a raw socket until `want` bytes arrived, `bite` bytes at a time
-- with `pause` seconds between reads (a slow client). Returns what arrived.
local function read_slowly(sock, want, bite, pause, timeout)
  local deadline = helper.now() + timeout
  local parts, got = {}, 0
  while got < want and helper.now() < deadline do
    sock:settimeout(math.max(0.01, deadline - helper.now()))
    local s, err, partial = sock:receive(math.min(bite, want - got))
    s = s or partial
    if s and #s > 0 then
      parts[#parts + 1] = s
      got = got + #s
    end
    if err and err ~= "timeout" then break end
    helper.sleep(pause)
  end
  return table.concat(parts)
end

describe("regressions from the async core review", function()
  -- 1. select used to keep only its ops table: a channel dropped from the
  -- table while the select waited could be collected with the select's node
  -- still queued in it (a use after free, reported by ASan), and its timer
  -- fetched the timeout object back from the table (whatever was there by then).
  it("select whose ops table loses a channel while it waits still ends by its timeout", function()
    local app = {
      ["index.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
      ["sel.lua"] = [[
local moonring = require "moonring"
return function(req)
  local tmo = moonring.timeout(0.3)
  local ops = { moonring.channel(), tmo }
  moonring.spawn(function()
    ops[1] = nil                      -- the only reference to the channel
    if req.query_string == "both" then ops[2] = false end   -- and the timeout's entry
    collectgarbage(); collectgarbage()
  end)
  local op = moonring.select(ops)     -- parks in the channel's takers
  return { status = 200, body = op == tmo and "timeout\n" or ("other: " .. tostring(op) .. "\n") }
end
]],
      -- churn: new channels and collections reuse whatever was freed
      ["churn.lua"] = [[
local moonring = require "moonring"
return function(req)
  for i = 1, 2000 do local ch = moonring.channel(1); ch:put(i); ch:take() end
  collectgarbage(); collectgarbage()
  return { status = 200, body = "churned\n" }
end
]],
    }
    helper.with_server({ files = app }, function(server)
      for i, path in ipairs { "/sel", "/sel?both", "/sel" } do
        local res = get_within(server, path, 5 * helper.slow, "select #" .. i)
        assert.are.equal(200, res.status)
        assert.are.equal("timeout\n", res.body)
        assert.are.equal(200, get_within(server, "/churn", 5 * helper.slow, "churn").status)
      end
      helper.assert_serves(server.port, "/")
    end) -- Server:stop fails the spec on a sanitizer report
  end)

  -- 2. select pushed one stack slot per pending op without growing the stack.
  it("select with 5000 pending put ops and a short timeout returns the timeout", function()
    local app = {
      ["index.lua"] = [[
local moonring = require "moonring"
return function(req)
  local ops = {}
  for i = 1, 5000 do ops[i] = { moonring.channel(), "v" .. i } end  -- unbuffered puts: none ready
  local tmo = moonring.timeout(0.05)
  ops[#ops + 1] = tmo
  local op = moonring.select(ops)
  return { status = 200, body = op == tmo and "timeout\n" or ("other: " .. tostring(op) .. "\n") }
end
]],
      ["ok.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
    }
    helper.with_server({ files = app }, function(server)
      for i = 1, 2 do
        local res = get_within(server, "/", 5 * helper.slow, "select #" .. i)
        assert.are.equal(200, res.status)
        assert.are.equal("timeout\n", res.body)
      end
      helper.assert_serves(server.port, "/ok")
    end)
  end)

  -- 3. moonring's coroutine.close kept Lua's own close as its upvalue: any
  -- handler could fetch it with debug.getupvalue and close a task's coroutine
  -- under moonring's feet.
  it("debug.getupvalue(coroutine.close, 1) hands out nothing that can close a task's coroutine", function()
    local app = {
      ["index.lua"] = helper.DUMP .. [[
local moonring = require "moonring"
return function(req)
  local ch = moonring.channel()
  local parked
  local task = moonring.spawn(function()
    parked = coroutine.running()
    return moonring.select{ ch, moonring.timeout(2) }
  end)
  moonring.sleep(0.05)                                   -- the task parks in select
  local name, uv = debug.getupvalue(coroutine.close, 1)
  local r = { name = name, uv_type = type(uv), status = task:status() }
  if type(uv) == "function" then                         -- the attack the bug allowed
    r.attack = { pcall(uv, parked) }
    r.attack[2] = tostring(r.attack[2])
  end
  r.close = { pcall(coroutine.close, parked) }           -- refused, as documented
  r.close[2] = tostring(r.close[2])
  ch:put("x")                                            -- the parked select takes it
  local op, v = task:join()
  r.joined = { op == ch, v }
  return { status = 200, body = dump(r) }
end
]],
    }
    helper.with_server({ files = app }, function(server)
      local res = get_within(server, "/", 5 * helper.slow, "getupvalue")
      assert.are.equal(200, res.status, res.raw)
      local r = helper.undump(res.body)
      assert.is_nil(r.name, "coroutine.close has an upvalue named " .. tostring(r.name))
      assert.are.equal("nil", r.uv_type)
      assert.is_nil(r.attack)
      assert.are.equal("waiting", r.status)
      assert.is_false(r.close[1])
      assert.matches("cannot resume or close a coroutine that belongs to moonring's runner", r.close[2], 1, true)
      assert.are.same({ true, "x" }, r.joined)
      helper.assert_serves(server.port, "/")
    end)
  end)

  -- 4. One run of the task queue used to run every task woken meanwhile too:
  -- two tasks ping-ponging on an unbuffered channel never let the loop poll
  -- (with --cpu-budget 0 nothing ever stopped them).
  it("two background tasks ping-ponging forever starve neither other requests nor SIGTERM", function()
    local app = {
      ["index.lua"] = [[return function(req) return { status = 200, body = "hello\n" } end]],
      ["_lib/state.lua"] = [[return { n = 0 }]],
      ["state.lua"] = helper.STATE_ROUTE,
      ["pingpong.lua"] = [[
local moonring = require "moonring"
local state = require "_lib.state"
return function(req)
  local ch = moonring.channel()                 -- unbuffered: every put/take parks one side
  -- each loop ends once its task is cancelled (put/take then return nil)
  moonring.background(function() while ch:put(1) do state.n = state.n + 1 end end)
  moonring.background(function() while ch:take() do end end)
  return { status = 200, body = "started\n" }
end
]],
    }
    helper.with_server({ files = app, args = { "--cpu-budget", "0" } }, function(server)
      local bound = 5 * helper.slow
      assert.are.equal(200, get_within(server, "/pingpong", bound, "start").status)
      helper.sleep(0.2)
      for i = 1, 3 do
        local res = get_within(server, "/", bound, "a request beside the ping-pong #" .. i)
        assert.are.equal(200, res.status)
        assert.are.equal("hello\n", res.body)
      end
      local n1 = helper.undump(get_within(server, "/state", bound, "state").body).n
      helper.sleep(0.2)
      local n2 = helper.undump(get_within(server, "/state", bound, "state").body).n
      assert.is_true(n1 > 0 and n2 > n1, string.format("the ping-pong is not running (%d then %d)", n1, n2))
      local status = server:stop(bound)
      assert.is_nil(server.killed, "SIGTERM did not stop the server within " .. bound .. " s")
      assert.are.equal(0, status)
    end)
  end)

  -- 5. Lua code running on a coroutine other than the task's own (the
  -- pending __close handlers coroutine.close runs, those of a failed
  -- coroutine.wrap generator) and an error object's __tostring escaped the
  -- CPU budget: the server hung for good.
  it("--cpu-budget stops endless __close handlers and __tostring; the server goes on", function()
    local app = {
      ["index.lua"] = [[return function(req) return { status = 200, body = "hello\n" } end]],
      ["close.lua"] = [[
return function(req)
  local co = coroutine.create(function()
    local x <close> = setmetatable({}, { __close = function() while true do end end })
    coroutine.yield()
  end)
  coroutine.resume(co)
  coroutine.close(co)                  -- runs the endless __close on co
  return { status = 200, body = "closed\n" }
end
]],
      ["wrap.lua"] = [[
return function(req)
  local gen = coroutine.wrap(function()
    local x <close> = setmetatable({}, { __close = function() while true do end end })
    error("boom")
  end)
  gen()
end
]],
      ["tostr.lua"] = [[
return function(req)
  error(setmetatable({}, { __tostring = function() while true do end end }))
end
]],
    }
    helper.with_server({ files = app, args = { "--cpu-budget", "0.3" } }, function(server)
      local bound = 5 * helper.slow
      local res = get_within(server, "/close", bound, "endless __close under coroutine.close")
      assert.is_truthy(res.status == 200 or res.status == 500, "status " .. res.status)
      assert.are.equal(200, get_within(server, "/", bound, "after /close").status)
      res = get_within(server, "/wrap", bound, "endless __close of a failed coroutine.wrap")
      assert.are.equal(500, res.status)
      assert.are.equal(200, get_within(server, "/", bound, "after /wrap").status)
      res = get_within(server, "/tostr", bound, "endless __tostring of an error object")
      assert.are.equal(500, res.status)
      assert.are.equal(200, get_within(server, "/", bound, "after /tostr").status)
    end)
  end)

  -- 6. Logging the error of a stack overflow looked for the request's frame
  -- with one O(depth) lua_getstack per level: ~200000 levels kept the loop
  -- busy for minutes.
  it("a handler that overflows the Lua stack gets 500 and the server answers the next request", function()
    local app = {
      ["overflow.lua"] = [[
local function f(n) return 1 + f(n + 1) end     -- not a tail call
return function(req) f(1) end
]],
      ["index.lua"] = [[return function(req) return { status = 200, body = "hello\n" } end]],
    }
    helper.with_server({ files = app }, function(server)
      local res = get_within(server, "/overflow", 10 * helper.slow, "stack overflow")
      assert.are.equal(500, res.status)
      res = get_within(server, "/", 10 * helper.slow, "the request after the overflow")
      assert.are.equal(200, res.status)
      assert.is_truthy(server:wait_stderr("stack overflow", 5 * helper.slow), "the overflow was not logged")
    end)
  end)

  -- 7. The client's FIN behind a pipelined, unfinished (or malformed) second
  -- request closed the connection while the first response was still queued.
  it("a 16 MiB response followed by a pipelined partial request and a FIN arrives whole", function()
    local app = {
      ["index.lua"] = [[
local moonring = require "moonring"
local big = string.rep("x", 16 * 1024 * 1024)
return function(req)
  moonring.sleep(0.05)                 -- the pipelined rest waits meanwhile
  return { status = 200, body = big }
end
]],
    }
    helper.with_server({ files = app }, function(server)
      for _, rest in ipairs { "GET /next HTTP/1.1\r\n", "BAD REQUEST\r\n\r\n" } do
        local c = helper.connect(server.port)
        c:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n" .. rest)
        c:shutdown("send")
        helper.sleep(0.5)
        local text = c:read_until_close(10 * helper.slow)
        c:close()
        local res = helper.parse(text)[1]
        assert.is_truthy(res, "no response at all behind " .. string.format("%q", rest))
        assert.are.equal(200, res.status)
        assert.are.equal(tostring(16 * MIB), res.headers["content-length"])
        assert.are.equal(16 * MIB, #res.body,
          string.format("body cut short behind %q: %d of %d bytes", rest, #res.body, 16 * MIB))
      end
    end)
  end)

  -- 8. The drain closed at once every connection with no request in flight,
  -- including one still writing a complete response.
  it("SIGTERM while a complete 16 MiB keep-alive response is read slowly: all bytes arrive", function()
    local app = {
      ["index.lua"] = [[
local big = string.rep("x", 16 * 1024 * 1024)
return function(req) return { status = 200, body = big } end
]],
    }
    helper.with_server({ files = app }, function(server)
      local c = helper.connect(server.port, { rcvbuf = 64 * 1024 })
      c:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")  -- keep-alive; answered at once
      local head = read_slowly(c.sock, 64 * 1024, 16 * 1024, 0.01, 5 * helper.slow)
      assert.matches("^HTTP/1%.1 200", head)
      helper.sleep(0.3)                             -- most of it waits in the write queue
      assert.is_true(server:signal("TERM"))
      local more = read_slowly(c.sock, 16 * MIB, 256 * 1024, 0.02, 20 * helper.slow)
      local rest = c:read_until_close(5 * helper.slow)
      c:close()
      local res = helper.parse(head .. more .. rest)[1]
      assert.is_truthy(res, "no parseable response")
      assert.are.equal(200, res.status)
      assert.are.equal(16 * MIB, #res.body,
        string.format("body cut short by the shutdown: %d of %d bytes", #res.body, 16 * MIB))
      assert.are.equal(0, server:wait(5 * helper.slow))
    end)
  end)

  -- 9. The send timeout and the request deadline shared one timer slot: the
  -- send timeout of a slowly read response, once the output was all written,
  -- fired the pipelined request's deadline early (504).
  it("a pipelined request behind a slowly read streamed response gets its 200, not an early 504", function()
    local app = {
      ["a.lua"] = [[
local moonring = require "moonring"
local chunk = string.rep("a", 16 * 1024)
return function(req)
  return { status = 200, body = moonring.stream(function(out)
    for i = 1, 512 do out:write(chunk) end     -- 8 MiB, many writes in flight
  end) }
end
]],
      ["b.lua"] = [[
local moonring = require "moonring"
return function(req) moonring.sleep(3); return { status = 200, body = "b done\n" } end
]],
    }
    local args = { "--request-timeout", "10", "--idle-timeout", "1", "--write-buffer", "64m" }
    helper.with_server({ files = app, args = args }, function(server)
      local c = helper.connect(server.port)
      c:send("GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local first = read_slowly(c.sock, 8 * MIB, 256 * 1024, 0.05, 20 * helper.slow)  -- ~4 MiB/s
      local rest = c:read_until_close(10 * helper.slow)
      c:close()
      local all, err = helper.parse(first .. rest)
      assert.is_truthy(all[1], "no response to /a: " .. tostring(err))
      assert.are.equal(200, all[1].status)
      assert.are.equal(8 * MIB, #all[1].body)
      assert.is_truthy(all[2], "no response to /b: " .. tostring(err))
      assert.are.equal(200, all[2].status, "the pipelined request got " .. all[2].status)
      assert.are.equal("b done\n", all[2].body)
    end)
  end)

  -- 10. A handler resumed in the same loop turn its deadline passed in
  -- returned its response after the 504: "response already sent" was logged
  -- as an error of the request.
  it("a handler woken just as its deadline passed logs no 'response already sent' error", function()
    local app = {
      ["index.lua"] = [[
local moonring = require "moonring"
return function(req)
  moonring.spawn(function()           -- stands for any busy stretch of the loop
    moonring.sleep(0.8)
    local t = os.clock() while os.clock() - t < 0.6 do end
  end)
  moonring.sleep(0.9)                 -- due while the loop is busy, as is the deadline
  return { status = 200, body = "late\n" }
end
]],
      ["ok.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
    }
    local args = { "--request-timeout", "1", "--cpu-budget", "0" }
    helper.with_server({ files = app, args = args }, function(server)
      local res = get_within(server, "/", 5 * helper.slow, "the late handler")
      assert.is_truthy(res.status == 504 or res.status == 200, "status " .. res.status)
      helper.assert_serves(server.port, "/ok")
      assert.is_truthy(server:wait_stderr('"GET /ok HTTP/1%.1" 200', 2 * helper.slow))
      helper.sleep(0.3)
      local log = server:stderr_text()
      assert.is_nil(log:find("response already sent", 1, true), "logged:\n" .. log)
      assert.is_nil(log:find("[error] request 1 GET", 1, true), "logged:\n" .. log)
    end)
  end)

  -- 11. A body reader cancelled while it waited left the connection armed
  -- with the body's idle timeout: the streaming response was reset a second
  -- later although nobody waited for the body any more.
  it("a cancelled body reader does not get the streaming response reset by the idle timeout", function()
    local app = {
      ["index.lua"] = [[
local moonring = require "moonring"
return function(req)
  return { status = 200, body = moonring.stream(function(out)
    out:write("start\n")
    local reader = moonring.spawn(function() return req.body:read("a") end)
    moonring.sleep(0.1)
    reader:cancel()                          -- nobody waits for the body any more
    for i = 1, 6 do moonring.sleep(0.5); if not out:write("tick " .. i .. "\n") then return end end
  end) }
end
]],
    }
    helper.with_server({ files = app, args = { "--idle-timeout", "1" } }, function(server)
      local c = helper.connect(server.port)
      c:send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")  -- 90 bytes never come
      local res, err = c:try_response({ timeout = 5 * helper.slow })
      c:close()
      assert.is_truthy(res, "the streamed response did not complete: " .. tostring(err))
      assert.are.equal(200, res.status)
      assert.is_true(res.chunked)
      local want = { "start\n" }
      for i = 1, 6 do want[#want + 1] = "tick " .. i .. "\n" end
      assert.are.equal(table.concat(want), res.body)
    end)
  end)
end)
