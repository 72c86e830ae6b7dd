-- Names and addresses for the cosockets (issue 9 item 4): moonring.resolve,
-- connect by name through libuv's resolver and its per-worker cache, and
-- connect("unix:/path"), against spec/upstream.lua (see spec/cosockets.lua).
local helper = require "helper"
local cs = require "cosockets"
local run, run_raises, start, finish = cs.run, cs.run_raises, cs.start, cs.finish
local timed_hello = cs.timed_hello

describe("names and addresses", function()
  local up, server
  setup(function() up, server = cs.start_fixture() end)
  teardown(function() cs.stop_fixture(up, server) end)

  describe("DNS", function()
    it("moonring.resolve(\"localhost\") and connect(\"localhost\", port) work", function()
      local r = run(server, [[
        local addrs = moonring.resolve("localhost")
        local s = moonring.tcp()
        s:settimeout(3000)
        local ok, err = s:connect("localhost", UP)
        return addrs, ok, err, cmd(s, "PING"), moonring.resolve("127.0.0.1"), moonring.resolve("::1")
      ]])
      assert.are.equal("127.0.0.1", r[1][1], "IPv4 first")
      assert.are.same({ 1, nil, "PONG", { "127.0.0.1" }, { "::1" } }, { r[2], r[3], r[4], r[5], r[6] })
    end)

    it("a lookup parks only its task: another task runs while it waits", function()
      local r = run(server, [[
        local order = {}
        local function with(opts)
          local t = moonring.spawn(function()
            order[#order + 1] = "resolve"
            local a = moonring.resolve("localhost", opts)
            order[#order + 1] = "resolved"
            return a
          end)
          local o = moonring.spawn(function() order[#order + 1] = "other" end)
          local a = t:join()
          o:join()
          return a and a[1]
        end
        local uncached = with({ ttl = 0 })
        local uncached_order = table.concat(order, " ")
        order = {}
        with()                                 -- fills the cache
        order = {}
        local cached = with()
        return uncached, uncached_order, cached, table.concat(order, " ")
      ]])
      assert.are.same({ "127.0.0.1", "resolve other resolved",      -- no cache: it waited
                        "127.0.0.1", "resolve resolved other",      -- cached: it did not
                        n = 4 }, r)
    end)

    it("many lookups at once while another client is served", function()
      local c = start(server, [[
        local tasks = {}
        for i = 1, 200 do
          tasks[i] = moonring.spawn(function()
            local s = moonring.tcp()
            if i % 2 == 0 then return moonring.resolve("localhost", { ttl = 0 }) and "ok" end
            moonring.dns { ttl = 0 }
            s:settimeout(3000)
            local ok, err = s:connect("localhost", UP)
            s:close()
            return ok and "ok" or err
          end)
        end
        local bad = {}
        for i = 1, 200 do
          local v, err = tasks[i]:join()
          if v ~= "ok" then bad[#bad + 1] = tostring(v) .. " " .. tostring(err) end
        end
        moonring.dns { ttl = 30 }
        return bad
      ]])
      local res, took = timed_hello(server)
      assert.are.equal(200, res.status)
      assert.is_true(took < 0.5 * helper.slow, "GET /hello took " .. took .. " s")
      assert.are.same({ {}, n = 1 }, finish(c))
    end)

    it("an unknown name: nil, \"... could not be resolved (...)\" from resolve and connect", function()
      local r = run(server, [[
        local a = table.pack(moonring.resolve("no-such-host.invalid"))
        local s = moonring.tcp()
        local b = table.pack(s:connect("no-such-host.invalid", 80))
        return a, b, table.pack(s:send("x"))
      ]])
      assert.is_nil(r[1][1])
      assert.matches("^no%-such%-host%.invalid could not be resolved %(.+%)$", r[1][2])
      assert.is_nil(r[2][1])
      assert.matches("^no%-such%-host%.invalid could not be resolved %(.+%)$", r[2][2])
      assert.are.same({ nil, "closed", n = 2 }, r[3])
    end)

    it("moonring.dns{ ttl = 0 } disables the cache and still resolves", function()
      local r = run(server, [[
        moonring.dns { ttl = 0 }
        local out = {}
        for i = 1, 3 do
          local s = moonring.tcp()
          s:settimeout(3000)
          assert(s:connect("localhost", UP))
          out[i] = cmd(s, "PING")
          s:close()
        end
        local a = moonring.resolve("localhost")
        moonring.dns { ttl = 30 }
        return out, a[1]
      ]])
      assert.are.same({ { "PONG", "PONG", "PONG" }, "127.0.0.1", n = 2 }, r)
    end)

    it("misuse raises: a non-string name, bad options", function()
      assert.matches("string expected", run_raises(server, [[ moonring.resolve(42 > 1) ]]))
      assert.matches("options table", run_raises(server, [[ moonring.resolve("localhost", 5) ]]))
      assert.matches("ttl", run_raises(server, [[ moonring.resolve("localhost", { ttl = -1 }) ]]))
      assert.matches("table expected", run_raises(server, [[ moonring.dns(0) ]]))
    end)
  end)

  describe("unix sockets", function()
    it("connect(\"unix:/path\") talks to a unix socket server, and pools by path", function()
      local r = run(server, [[
        local s = moonring.tcp()
        s:settimeout(3000)
        local ok, err = s:connect("unix:" .. UNIX)
        local id = cmd(s, "ID")
        local pong = cmd(s, "PING")
        assert(s:setkeepalive())
        local s2 = moonring.tcp()
        assert(s2:connect("unix:" .. UNIX))
        return ok, err, pong, cmd(s2, "ID") == id, s2:getreusedtimes(), s2:close()
      ]])
      assert.are.same({ 1, nil, "PONG", true, 1, 1, n = 6 }, r)
    end)

    it("a unix path nobody listens on fails with nil, err", function()
      local r = run(server, [[
        local s = moonring.tcp()
        s:settimeout(3000)
        return s:connect("unix:" .. UNIX .. ".missing")
      ]])
      assert.is_nil(r[1])
      assert.matches("no such file", r[2])
    end)
  end)

end)
