-- examples/redis-counter, served by the real binary from its own directory
-- against a real redis-server this spec starts (helper.redis_start) and
-- stops by pid, checked over real sockets.
local helper = require "helper"
local cjson = require "cjson"

local rds

setup(function()
  rds = helper.redis_start()
end)

teardown(function()
  if rds then rds.stop() end
end)

-- Serves the example against Redis on `port` (default: the spec's), runs
-- fn(server), then checks that the server logged no error or warning.
local function with_counter(fn, opts)
  opts = opts or {}
  return helper.with_server({
    app = "examples/redis-counter",
    args = opts.args,
    env = { REDIS_PORT = tostring(opts.port or rds.port) },
  }, function(server)
    fn(server)
    local log = server:stderr_text()
    assert.is_falsy(log:find("[error]", 1, true), log)
    assert.is_falsy(log:find("[warn]", 1, true), log)
  end)
end

local function json(res)
  local ok, value = pcall(cjson.decode, res.body)
  if not ok then error("not JSON: " .. string.format("%q", res.raw or res.body), 2) end
  return value
end

local serial = 0
local function unique()
  serial = serial + 1
  return string.format("c%d-%d", os.time(), serial)
end

-- Connections Redis has accepted so far (this call's own included).
local function accepted()
  return tonumber(rds:cmd("INFO", "stats"):match("total_connections_received:(%d+)"))
end

describe("examples/redis-counter", function()
  it("lists what to try on GET /", function()
    with_counter(function(server)
      local res = helper.get(server.port, "/")
      assert.are.equal(200, res.status)
      assert.is_truthy(res.body:find("/counter/home", 1, true))
      assert.is_truthy(res.body:find("127.0.0.1:" .. rds.port, 1, true))
    end)
  end)

  it("counts with INCR, reads with GET, resets with DELETE; the value is in Redis", function()
    with_counter(function(server)
      local name = unique()
      local path = "/counter/" .. name
      assert.are.same({ name = name, count = 0, worker = 0 }, json(helper.get(server.port, path)))
      for i = 1, 3 do
        local res = helper.request(server.port, "POST", path)
        assert.are.equal(200, res.status)
        assert.are.equal("application/json", res.headers["content-type"])
        assert.are.equal(i, json(res).count)
      end
      assert.are.equal(3, json(helper.get(server.port, path)).count)
      assert.are.equal("3", rds:cmd("GET", "counter:" .. name))
      assert.are.equal(0, json(helper.request(server.port, "DELETE", path)).count)
      assert.is_nil(rds:cmd("GET", "counter:" .. name))
      assert.are.equal(0, json(helper.get(server.port, path)).count)
    end)
  end)

  it("refuses a name that is not one with 400", function()
    with_counter(function(server)
      local res = helper.request(server.port, "POST", "/counter/no%20spaces")
      assert.are.equal(400, res.status)
      assert.is_truthy(json(res).error:find("counter name", 1, true))
    end)
  end)

  it("shares the counters between servers, and loses no hit counted at once by several workers", function()
    local name = unique()
    local path = "/counter/" .. name
    with_counter(function(a)
      with_counter(function(b)
        -- 40 POSTs at once, on 40 connections, to a server with 2 workers
        local conns = {}
        for i = 1, 40 do
          conns[i] = helper.connect(b.port, { timeout = 10 * helper.slow })
          assert(conns[i]:send(helper.build_request(b.port, "POST", path)))
        end
        local counts = {}
        for i = 1, 40 do
          local res = conns[i]:response()
          conns[i]:close()
          assert.are.equal(200, res.status)
          counts[#counts + 1] = json(res).count
        end
        table.sort(counts)
        for i = 1, 40 do assert.are.equal(i, counts[i]) end   -- each INCR saw its own value
        -- the other server (another process) reads and adds to the same one
        assert.are.equal(40, json(helper.get(a.port, path)).count)
        assert.are.equal(41, json(helper.request(a.port, "POST", path)).count)
        assert.are.equal(41, json(helper.get(b.port, path)).count)
      end, { args = { "--workers", "2" } })
    end)
  end)

  it("keeps its Redis connections in a pool instead of one per request", function()
    with_counter(function(server)
      local path = "/counter/" .. unique()
      local before = accepted()
      for _ = 1, 30 do assert.are.equal(200, helper.request(server.port, "POST", path).status) end
      assert.are.equal(30, json(helper.get(server.port, path)).count)
      -- one pooled connection served all 31 (one request at a time), plus
      -- the spec's own connection asking again
      assert.are.equal(before + 2, accepted())
    end)
  end)

  it("answers 503 with retry-after at once when Redis is down", function()
    with_counter(function(server)
      local res = helper.request(server.port, "POST", "/counter/home")
      assert.are.equal(503, res.status)
      assert.are.equal("1", res.headers["retry-after"])
      assert.are.same({ error = "redis unavailable: connection refused" }, json(res))
      assert.is_true(res.elapsed < 1 * helper.slow, "took " .. res.elapsed .. " s")
    end, { port = helper.free_port() })
  end)
end)
