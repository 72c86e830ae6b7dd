-- examples/fanout, served by the real binary from its own directory and
-- checked over real sockets: three upstream calls in parallel under one
-- shared deadline; what arrived in time is answered, the rest is marked, and
-- the calls still running are cancelled with their request (the pretend
-- upstream, served by the same process, sees its client leave: 499).
local helper = require "helper"
local cjson = require "cjson"

local function get(server, path)
  local t0 = helper.now()
  local res = helper.request(server.port, "GET", path)
  local took = helper.now() - t0
  assert.are.equal(200, res.status, res.raw)
  return cjson.decode(res.body), took
end

describe("examples/fanout", function()
  it("answers at the deadline with what arrived and marks what did not", function()
    helper.with_server({ app = "examples/fanout" }, function(server)
      local out, took = get(server, "/?budget=0.3")
      assert.are.equal("ok", out.services.weather.status)
      assert.are.equal(21, out.services.weather.answer.celsius)
      assert.are.equal("ok", out.services.news.status)
      assert.are.equal("timed out", out.services.stocks.status)
      -- the answer comes at the deadline: not before the slow call's 0.8 s
      -- would have ended it, and not much after 0.3 s
      assert.is_true(took >= 0.29, "answered after " .. took .. " s")
      assert.is_true(took < 0.7 * helper.slow, "answered after " .. took .. " s")
      -- the three calls ran at the same time: news (0.1 s) arrived by ~0.1 s
      assert.is_true(out.services.news.took < 0.25 * helper.slow, cjson.encode(out))
      -- the cut call's upstream request was left by its client (the cancelled
      -- task closed its connection): the pretend service logs a 499
      assert.is_true(helper.eventually(function()
        return server:stderr_text():find('"GET /svc/stocks HTTP/1.1" 499', 1, true) ~= nil
      end, 3 * helper.slow), server:stderr_text())
      assert.is_falsy(server:stderr_text():find("[error]", 1, true), server:stderr_text())
    end)
  end)

  it("waits for all three when the budget allows, and per-call delays move the cut", function()
    helper.with_server({ app = "examples/fanout" }, function(server)
      local out = get(server, "/?budget=1.5")
      for _, name in ipairs({ "weather", "news", "stocks" }) do
        assert.are.equal("ok", out.services[name].status, cjson.encode(out))
      end
      assert.is_true(out.took < 1.4 * helper.slow, cjson.encode(out))
      out = get(server, "/?budget=0.3&news=2&weather=0")
      assert.are.equal("ok", out.services.weather.status)
      assert.are.equal("timed out", out.services.news.status)
      assert.are.equal("timed out", out.services.stocks.status)
    end)
  end)

  it("marks an upstream that fails as failed, with its error", function()
    -- UPSTREAM points at a port nobody listens on: every call is refused
    local port = helper.free_port()
    helper.with_server({ app = "examples/fanout", env = { UPSTREAM = "http://127.0.0.1:" .. port } },
      function(server)
        local out, took = get(server, "/?budget=0.5")
        for _, name in ipairs({ "weather", "news", "stocks" }) do
          assert.are.equal("failed", out.services[name].status, cjson.encode(out))
          assert.are.equal("connection refused", out.services[name].error)
        end
        assert.is_true(took < 0.4 * helper.slow, "failures are answered at once, took " .. took)
      end)
  end)
end)
