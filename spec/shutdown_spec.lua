-- Graceful shutdown (DESIGN.md section 5): on SIGTERM/SIGINT stop accepting,
-- finish in-flight requests, close idle connections, exit 0.
local helper = require "helper"

local APP = {
  ["sleep.lua"] = [[
local moonring = require "moonring"
return function(req)
  moonring.sleep(tonumber((req.query_string or ""):match("s=([%d.]+)")) or 1)
  return { status = 200, body = "finished\n" }
end
]],
  ["index.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
}

describe("graceful shutdown", function()
  for _, sig in ipairs { "TERM", "INT" } do
    it("exits 0 on SIG" .. sig .. " when idle", function()
      local server = helper.start { app = helper.app(APP) }
      finally(function() server:stop() end)
      assert.is_true(server:signal(sig))
      assert.are.equal(0, server:wait(5 * helper.slow))
    end)
  end

  it("finishes a request in flight after SIGTERM, then exits 0", function()
    local server = helper.start { app = helper.app(APP) }
    finally(function() server:stop() end)
    local c = helper.connect(server.port)
    c:send("GET /sleep?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    helper.sleep(0.2)
    assert.is_true(server:signal("TERM"))
    local res = c:response({ timeout = 5 * helper.slow })
    c:close()
    assert.are.equal(200, res.status)
    assert.are.equal("finished\n", res.body)
    assert.are.equal(0, server:wait(5 * helper.slow))
  end)

  it("stops accepting new connections while draining", function()
    local server = helper.start { app = helper.app(APP) }
    finally(function() server:stop() end)
    local c = helper.connect(server.port)
    c:send("GET /sleep?s=1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
    helper.sleep(0.2)
    assert.is_true(server:signal("TERM"))
    helper.sleep(0.3)
    assert.is_nil(server:exit_status(), "server exited before the in-flight request finished")
    local sock = require("socket").tcp()
    sock:settimeout(1)
    local ok, err = sock:connect(helper.host, server.port)
    if ok then
      -- connected (backlog): it must not be served
      sock:send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local data, rerr, partial = sock:receive("*a")
      local got = data or partial or ""
      assert.is_nil(got:match("^HTTP/1%.1 200"), "a new connection was served during the drain")
    else
      assert.matches("refused", err)
    end
    sock:close()
    assert.are.equal(200, c:response({ timeout = 5 * helper.slow }).status)
    c:close()
    assert.are.equal(0, server:wait(5 * helper.slow))
  end)

  it("closes idle keep-alive connections and does not wait for them", function()
    local server = helper.start { app = helper.app(APP) }
    finally(function() server:stop() end)
    local c = helper.connect(server.port)
    finally(function() c:close(); server:stop() end)
    c:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.are.equal(200, c:response().status)
    local t0 = helper.now()
    assert.is_true(server:signal("TERM"))
    assert.is_true(c:wait_closed(3 * helper.slow))
    c:close()  -- as any client does on EOF; the server may linger until then
    assert.are.equal(0, server:wait(5 * helper.slow))
    assert.is_true(helper.now() - t0 < 2 * helper.slow, "shutdown waited for an idle connection")
  end)

  it("gives up on requests still running after --grace and exits", function()
    local server = helper.start { app = helper.app(APP), args = { "--grace", "0.5" } }
    finally(function() server:stop() end)
    local c = helper.connect(server.port)
    c:send("GET /sleep?s=10 HTTP/1.1\r\nHost: x\r\n\r\n")
    helper.sleep(0.2)
    local t0 = helper.now()
    assert.is_true(server:signal("TERM"))
    local status = server:wait(5 * helper.slow)
    c:close()
    assert.is_truthy(status, "server still running 5 s after SIGTERM with --grace 0.5")
    assert.is_true(helper.now() - t0 < 3 * helper.slow)
  end)
end)
