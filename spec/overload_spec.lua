-- Overload (DESIGN.md sections 4.5 and 5): --max-inflight sheds requests
-- past the limit with 503 + Retry-After before any handler runs;
-- moonring.limit bounds the concurrency of the routes it wraps, with a
-- bounded queue and queue timeout; --cpu-budget stops Lua code that runs
-- without waiting, and the server serves everyone else meanwhile.
local helper = require "helper"

local APP = {
  ["index.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
  ["hello.lua"] = [[return function(req) return { status = 200, body = "hello\n" } end]],
  ["_lib/state.lua"] = [[return { park_runs = 0, ran = {} }]],
  ["state.lua"] = helper.STATE_ROUTE,
  -- ?s=SECONDS; says on stderr when it starts
  ["park.lua"] = [[
local moonring = require "moonring"
local state = require "_lib.state"
return function(req)
  state.park_runs = state.park_runs + 1
  io.stderr:write("park-start ", state.park_runs, "\n")
  io.stderr:flush()
  local s = tonumber((req.query_string or ""):match("s=([%d.]+)")) or 0
  if s > 0 then moonring.sleep(s) end
  return { status = 200, body = "parked\n" }
end
]],
  -- ?t=TAG[&s=SECONDS][&fail]
  ["limited.lua"] = [[
local moonring = require "moonring"
local state = require "_lib.state"
return moonring.limit { concurrency = 1, queue = 1, queue_timeout = 0.3 } (function(req)
  local qs = req.query_string or ""
  local tag = qs:match("t=([%w%-]+)") or "-"
  state.ran[#state.ran + 1] = tag
  io.stderr:write("limited-start ", tag, "\n")
  io.stderr:flush()
  if qs:find("fail", 1, true) then error("limited-fail-5b1e") end
  local s = tonumber(qs:match("s=([%d.]+)")) or 0
  if s > 0 then moonring.sleep(s) end
  return { status = 200, body = "ran " .. tag .. "\n" }
end)
]],
  ["spin.lua"] = [[return function(req) while true do end end]],
  -- catches the budget error and spins again
  ["spincatch.lua"] = [[
return function(req)
  local caught = 0
  while true do
    local ok, err = pcall(function() while true do end end)
    caught = caught + 1
    io.stderr:write("spincatch caught #", caught, ": ", tostring(err), "\n")
    io.stderr:flush()
  end
end
]],
  -- ?s=CPU-SECONDS of work without waiting
  ["busy.lua"] = [[
return function(req)
  local s = tonumber((req.query_string or ""):match("s=([%d.]+)")) or 0
  local t0 = os.clock()
  while os.clock() - t0 < s do end
  return { status = 200, body = "busy done\n" }
end
]],
}

local function with_app(args, fn)
  return helper.with_server({ files = APP, args = args or {} }, fn)
end

local state_of = helper.state

local function send_get(server, path)
  local c = helper.connect(server.port)
  c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
  return c
end

local function expect_shed(res)
  assert.are.equal(503, res.status, res.raw or res.body)
  assert.are.equal("1", res.headers["retry-after"])
end

describe("--max-inflight", function()
  it("answers 503 with Retry-After: 1 past the limit without running the handler, then serves again", function()
    with_app({ "--max-inflight", "2" }, function(server)
      local a = send_get(server, "/park?s=1")
      local b = send_get(server, "/park?s=1")
      assert.is_truthy(server:wait_stderr("park%-start 2"), "the two requests did not start:\n" .. server:stderr_text())
      -- a third on a keep-alive connection
      local c = helper.connect(server.port)
      c:send("GET /park HTTP/1.1\r\nHost: x\r\n\r\n")
      local shed = c:response()
      expect_shed(shed)
      assert.are.equal("Service Unavailable\n", shed.body)
      assert.are.equal(200, a:response().status)
      assert.are.equal(200, b:response().status)
      a:close()
      b:close()
      -- the connection that was shed is still usable, and requests succeed again
      c:send("GET /park HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local again = c:response()
      assert.are.equal(200, again.status)
      assert.are.equal("parked\n", again.body)
      c:close()
      assert.are.equal(3, state_of(server).park_runs, "the shed request reached its handler")
    end)
  end)
end)

describe("moonring.limit{ concurrency = 1, queue = 1, queue_timeout = 0.3 }", function()
  it("runs one, queues one that then runs, and sheds a third with 503 + Retry-After", function()
    with_app(nil, function(server)
      local a = send_get(server, "/limited?t=a&s=0.15")
      assert.is_truthy(server:wait_stderr("limited%-start a"), server:stderr_text())
      local b = send_get(server, "/limited?t=b")
      helper.sleep(0.05)
      local shed = helper.get(server.port, "/limited?t=c")
      expect_shed(shed)
      local ra, rb = a:response(), b:response()
      a:close()
      b:close()
      assert.are.equal(200, ra.status)
      assert.are.equal("ran a\n", ra.body)
      assert.are.equal(200, rb.status, rb.body)
      assert.are.equal("ran b\n", rb.body)
      assert.are.same({ "a", "b" }, state_of(server).ran, "the shed request ran, or the order is wrong")
    end)
  end)

  it("answers 503 to a queued request that waits past queue_timeout", function()
    with_app(nil, function(server)
      local a = send_get(server, "/limited?t=long&s=1")
      assert.is_truthy(server:wait_stderr("limited%-start long"), server:stderr_text())
      local t0 = helper.now()
      local res = helper.get(server.port, "/limited?t=waiter")
      local waited = helper.now() - t0
      expect_shed(res)
      assert.is_true(waited >= 0.25, string.format("shed after %.3fs, before the queue timeout", waited))
      assert.are.equal(200, a:response().status)
      a:close()
      assert.are.same({ "long" }, state_of(server).ran)
      -- the slot is free again
      assert.are.equal("ran next\n", helper.get(server.port, "/limited?t=next").body)
    end)
  end)

  it("releases the slot after a handler error", function()
    with_app(nil, function(server)
      for i = 1, 3 do
        local res = helper.get(server.port, "/limited?t=f" .. i .. "&fail")
        assert.are.equal(500, res.status, "request " .. i .. " after an error: " .. res.raw)
      end
      local res = helper.get(server.port, "/limited?t=ok")
      assert.are.equal(200, res.status, res.raw)
      assert.are.equal("ran ok\n", res.body)
      assert.is_truthy(server:wait_stderr("limited%-fail%-5b1e"))
    end)
  end)

  it("releases the slot of a request whose client left", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      c:send("GET /limited?t=gone&s=10 HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.is_truthy(server:wait_stderr("limited%-start gone"), server:stderr_text())
      c:reset()
      helper.sleep(0.3)
      local res = helper.get(server.port, "/limited?t=after")
      assert.are.equal(200, res.status, res.raw)
      assert.are.equal("ran after\n", res.body)
    end)
  end)
end)

describe("--cpu-budget", function()
  it("stops a handler that spins (500) while another client is answered, and keeps serving", function()
    with_app({ "--cpu-budget", "0.3" }, function(server)
      local spinner = send_get(server, "/spin")
      helper.sleep(0.05)              -- the spin has started
      local hello = helper.get(server.port, "/hello", { timeout = 5 * helper.slow })
      assert.are.equal(200, hello.status)
      assert.are.equal("hello\n", hello.body)
      local res = spinner:response()
      spinner:close()
      assert.are.equal(500, res.status)
      assert.is_truthy(server:wait_stderr("cpu budget exceeded"), "not logged:\n" .. server:stderr_text())
      helper.assert_serves(server.port, "/hello")
      helper.assert_serves(server.port, "/")
    end)
  end)

  it("stops a handler that catches the budget error and spins again", function()
    with_app({ "--cpu-budget", "0.3" }, function(server)
      local res = helper.get(server.port, "/spincatch", { timeout = 5 * helper.slow })
      assert.are.equal(500, res.status)
      local text = server:stderr_text()
      assert.is_truthy(text:find("spincatch caught #1: [^\n]*cpu budget exceeded"),
        "the handler did not catch the budget error:\n" .. text)
      helper.assert_serves(server.port, "/hello")
    end)
  end)

  it("is off with --cpu-budget 0", function()
    with_app({ "--cpu-budget", "0" }, function(server)
      local res = helper.get(server.port, "/busy?s=1.2", { timeout = 6 * helper.slow })
      assert.are.equal(200, res.status, res.raw)
      assert.are.equal("busy done\n", res.body)
      assert.is_falsy(server:stderr_text():find("cpu budget exceeded", 1, true))
    end)
  end)

  it("refuses a bad value at startup with exit status 2", function()
    local app = helper.app(APP)
    local r = helper.run { "--port", "0", "--cpu-budget", "soon", app }
    helper.remove(app)
    assert.are.equal(2, r.status, "stderr: " .. r.stderr)
  end)
end)
