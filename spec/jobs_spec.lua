-- moonring.jobs (issue 9 item 9): jobs enqueued from a handler with a 202
-- run in server tasks, with retries, timeouts and a concurrency limit, kept
-- in memory or in a real redis-server this spec starts (helper.redis_start)
-- and stops by pid. Everything goes through the real server: POST /work
-- answers 202 with a Location, and the spec polls that URL (GET /jobs/<id>,
-- jobs.status_handler) until the job is finished.
local helper = require "helper"
local cjson = require "cjson"

local APP = {
  -- configure from the environment the spec starts the server with
  ["_lib/config.lua"] = [[
local jobs = require "moonring.jobs"
local env = os.getenv
local opts = {
  concurrency = tonumber(env("JOBS_CONCURRENCY") or "4"),
  keep = tonumber(env("JOBS_KEEP") or "60"),
  run = env("JOBS_RUN") ~= "0",
}
if (env("JOBS_REDIS_PORT") or "") ~= "" then
  opts.store = { redis = { port = tonumber(env("JOBS_REDIS_PORT")), prefix = env("JOBS_PREFIX"),
                           lease = tonumber(env("JOBS_LEASE") or "30") } }
end
jobs.configure(opts)
return jobs
]],
  ["_lib/defs.lua"] = [[
local moonring = require "moonring"
local jobs = require "_lib.config"
require "_lib.version"
local seen = moonring.state("spec", function()
  return { running = 0, max_running = 0, calls = {}, finished = 0 }
end)

jobs.define("add", function(a)
  moonring.sleep(a.wait or 0.05)
  return { sum = a.x + a.y, pid = moonring.worker().pid, half = 0.5, list = { "a", "b" } }
end)

-- fails its first `fail_times` attempts (counted per `key`)
jobs.define("flaky", function(a)
  local n = (seen.calls[a.key] or 0) + 1
  seen.calls[a.key] = n
  if n <= a.fail_times then error("flaky-failure-" .. n, 0) end
  return "ok after " .. n
end, { retries = 3, backoff = 0.05 })

jobs.define("doomed", function()
  error("doomed-4f1a", 0)
end, { retries = 2, backoff = 0.05 })

jobs.define("slow", function()
  moonring.sleep(10)
  return "woke"
end, { timeout = 0.3, retries = 0 })

-- how many run at once
jobs.define("wave", function()
  seen.running = seen.running + 1
  if seen.running > seen.max_running then seen.max_running = seen.running end
  moonring.sleep(0.3)
  seen.running = seen.running - 1
  seen.finished = seen.finished + 1
  return true
end)
return jobs
]],
  -- rewritten by the reload scenario
  ["_lib/version.lua"] = [[
local moonring = require "moonring"
require("moonring.jobs").define("version", function(a)
  moonring.sleep(a.wait or 0)
  return "v1"
end)
return true
]],
  -- POST /work?job=NAME&k=v...: enqueue NAME with args { k = v } (numbers as numbers)
  ["work.lua"] = [[
local jobs = require "_lib.defs"
return function(req)
  local name, args = nil, {}
  for k, v in (req.query_string or ""):gmatch("([^&=]+)=([^&]*)") do
    if k == "job" then name = v else args[k] = tonumber(v) or v end
  end
  local res = jobs.accepted(name, args)
  return res
end
]],
  ["jobs/[id].lua"] = [[
require "_lib.defs"
return require("moonring.jobs").status_handler
]],
  ["state.lua"] = helper.DUMP .. [[
local moonring = require "moonring"
return function(req) return { status = 200, body = dump(moonring.state("spec")) } end
]],
  ["misuse.lua"] = helper.DUMP .. [[
local jobs = require "_lib.defs"
local moonring = require "moonring"
return function(req)
  local out = {}
  out.unknown_ok, out.unknown = pcall(jobs.enqueue, "no-such-job", {})
  out.fn_ok, out.fn = pcall(jobs.enqueue, "add", { x = 1, f = print })
  out.holes_ok, out.holes = pcall(jobs.enqueue, "add", { 1, nil, 3 })
  out.define_ok, out.define = pcall(jobs.define, "x", "not a function")
  out.option_ok, out.option = pcall(jobs.define, "x", print, { retries = -1 })
  out.configure_ok, out.configure = pcall(jobs.configure, { concurrency = 0 })
  out.status_id_ok, out.status_id = pcall(jobs.status, 42)
  out.unknown_status = jobs.status("0123456789abcdef01234567") == nil
  out.same_module = moonring.jobs == jobs
  -- a job waiting in memory pins the store
  jobs.enqueue("slow")
  out.switch_ok, out.switch = pcall(jobs.configure, { store = { redis = { port = 1 } } })
  return { status = 200, body = dump(out) }
end
]],
}

local function post(server, path)
  return helper.request(server.port, "POST", path, { timeout = 5 * helper.slow })
end

-- POST /work?<query> → the Location of the 202 (asserting the answer's shape).
local function enqueue(server, query)
  local res = post(server, "/work?" .. query)
  assert.are.equal(202, res.status, res.raw)
  local location = res.headers.location
  assert.is_string(location)
  assert.matches("^/jobs/[%w]+$", location)
  assert.matches("^application/json", res.headers["content-type"])
  local body = cjson.decode(res.body)
  assert.are.equal(location, body.status_url)
  assert.are.equal(location, "/jobs/" .. body.id)
  return location, body.id
end

-- GET location → its status code and the decoded JSON.
local function status_at(server, location)
  local res = helper.get(server.port, location, { timeout = 5 * helper.slow })
  return res.status, cjson.decode(res.body), res
end

-- Polls the status URL until the job is done or failed; returns the record.
local function finished(server, location, timeout)
  local last
  local ok = helper.eventually(function()
    local code, st = status_at(server, location)
    assert.are.equal(200, code)
    last = st
    return st.state == "done" or st.state == "failed"
  end, timeout or 5 * helper.slow)
  assert(ok, "the job did not finish in time; its last status: " .. cjson.encode(last))
  return last
end

local serial = 0
local function unique_prefix()
  serial = serial + 1
  return string.format("spec:jobs:%d:%d", os.time(), serial)
end

local rds

setup(function()
  rds = helper.redis_start()
end)

teardown(function()
  if rds then rds.stop() end
end)

-- The environment for a server on `store` ("memory" or "redis"); extra
-- entries are added to it.
local function env_for(store, extra)
  local env = {}
  if store == "redis" then
    env.JOBS_REDIS_PORT = tostring(rds.port)
    env.JOBS_PREFIX = unique_prefix()
  end
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

for _, store in ipairs { "memory", "redis" } do
  describe("moonring.jobs in " .. store, function()
    it("A JOB ENQUEUED WITH 202 RUNS TO COMPLETION AND ITS STATUS URL SHOWS THE RESULT", function()
      local env = env_for(store)
      helper.with_server({ files = APP, env = env }, function(server)
        local location, id = enqueue(server, "job=add&x=2&y=40&wait=0.2")
        local code, st = status_at(server, location)
        assert.are.equal(200, code)
        assert.are.equal(id, st.id)
        assert.are.equal("add", st.name)
        assert.is_true(st.state == "queued" or st.state == "running", st.state)
        assert.is_number(st.enqueued_at)
        st = finished(server, location)
        assert.are.equal("done", st.state)
        assert.are.same({ sum = 42, pid = server.pid, half = 0.5, list = { "a", "b" } }, st.result)
        assert.are.equal(1, st.attempts)
        assert.is_nil(st.error)
        assert.is_true(st.enqueued_at <= st.started_at and st.started_at <= st.finished_at)
        assert.is_true(st.finished_at - st.started_at >= 0.15, "the job waited 0.2 s")
        if store == "redis" then   -- the record lives in Redis
          local key = env.JOBS_PREFIX .. ":job:" .. id
          assert.are.equal("done", rds:cmd("HGET", key, "state"))
          assert.is_true(rds:cmd("PTTL", key) > 0, "a finished record expires")
        end
      end)
    end)

    it("retries a failing job with backoff until it succeeds", function()
      helper.with_server({ files = APP, env = env_for(store) }, function(server)
        local location = enqueue(server, "job=flaky&key=r1&fail_times=2")
        local st = finished(server, location)
        assert.are.equal("done", st.state)
        assert.are.equal("ok after 3", st.result)
        assert.are.equal(3, st.attempts)
        assert.is_nil(st.error)
        local log = server:stderr_text()
        assert.matches("job flaky %w+: attempt 1 of 4 failed %(retry in 0%.05 s%): flaky%-failure%-1", log)
        assert.matches("job flaky %w+: attempt 2 of 4 failed %(retry in 0%.1 s%): flaky%-failure%-2", log)
      end)
    end)

    it("records a job as failed with its error once its retries are used up", function()
      helper.with_server({ files = APP, env = env_for(store) }, function(server)
        local location = enqueue(server, "job=doomed")
        local st = finished(server, location)
        assert.are.equal("failed", st.state)
        assert.are.equal("doomed-4f1a", st.error)
        assert.are.equal(3, st.attempts)        -- retries = 2
        assert.is_nil(st.result)
        assert.is_number(st.finished_at)
        assert.matches("attempt 3 of 3 failed, the last: doomed%-4f1a", server:stderr_text())
      end)
    end)

    it("cancels a job at its timeout and records the error \"timeout\"", function()
      helper.with_server({ files = APP, env = env_for(store) }, function(server)
        local location = enqueue(server, "job=slow")
        local st = finished(server, location, 5 * helper.slow)
        assert.are.equal("failed", st.state)
        assert.are.equal("timeout", st.error)
        assert.are.equal(1, st.attempts)
        local ran = st.finished_at - st.started_at
        assert.is_true(ran >= 0.25 and ran < 5, "ran " .. ran .. " s, its timeout is 0.3 s")
      end)
    end)

    it("runs at most `concurrency` jobs at once (5 jobs of 0.3 s, concurrency 2)", function()
      helper.with_server({ files = APP, env = env_for(store, { JOBS_CONCURRENCY = "2" }) }, function(server)
        local started = helper.now()
        local locations = {}
        for i = 1, 5 do locations[i] = enqueue(server, "job=wave") end
        for i = 1, 5 do assert.are.equal("done", finished(server, locations[i]).state) end
        local st = helper.state(server)
        assert.are.equal(5, st.finished)
        assert.are.equal(2, st.max_running)
        assert.is_true(helper.now() - started >= 0.85, "three rounds of 0.3 s")
      end)
    end)

    it("drops a finished record `keep` seconds after it finished", function()
      helper.with_server({ files = APP, env = env_for(store, { JOBS_KEEP = "0.5" }) }, function(server)
        local location = enqueue(server, "job=add&x=1&y=1&wait=0")
        assert.are.equal("done", finished(server, location).state)
        local gone = helper.eventually(function()
          local code = status_at(server, location)
          return code == 404
        end, 5 * helper.slow)
        assert.truthy(gone)
        local code, body = status_at(server, location)
        assert.are.equal(404, code)
        assert.are.same({ error = "no such job" }, body)
      end)
    end)
  end)
end

describe("moonring.jobs", function()
  it("raises for an unknown job name and for arguments it cannot store", function()
    helper.with_server({ files = APP }, function(server)
      local out = helper.undump(helper.get(server.port, "/misuse").body)
      assert.is_false(out.unknown_ok)
      assert.matches("moonring.jobs.enqueue: no job named \"no%-such%-job\"", out.unknown)
      assert.is_false(out.fn_ok)
      assert.matches("arguments of job add cannot be stored: a function", out.fn)
      assert.is_false(out.holes_ok)
      assert.matches("an array with holes", out.holes)
      assert.is_false(out.define_ok)
      assert.matches("expected a function%(args%) for job x", out.define)
      assert.is_false(out.option_ok)
      assert.matches("retries must be a whole number >= 0", out.option)
      assert.is_false(out.configure_ok)
      assert.matches("concurrency must be a whole number >= 1", out.configure)
      assert.is_false(out.status_id_ok)
      assert.is_true(out.unknown_status)
      assert.is_true(out.same_module)
      assert.is_false(out.switch_ok)
      assert.matches("cannot change the store while 1 job%(s%) are queued or running in memory", out.switch)
      -- through a handler: a misuse is an error, so a 500
      assert.are.equal(500, post(server, "/work?job=no-such-job").status)
      assert.matches("no job named \"no%-such%-job\"", server:stderr_text())
    end)
  end)

  it("answers 404 for an unknown id and 405 for a method other than GET and HEAD", function()
    helper.with_server({ files = APP }, function(server)
      local code, body, res = status_at(server, "/jobs/0123456789abcdef01234567")
      assert.are.equal(404, code)
      assert.are.same({ error = "no such job" }, body)
      assert.matches("^application/json", res.headers["content-type"])
      code = status_at(server, "/jobs/not..an..id")
      assert.are.equal(404, code)
      local location = enqueue(server, "job=add&x=1&y=2")
      res = post(server, location)
      assert.are.equal(405, res.status)
      assert.are.equal("GET, HEAD", res.headers.allow)
    end)
  end)

  it("keeps queued and running jobs across a hot reload (SIGHUP); later attempts run the new code", function()
    local dir = helper.app(APP)
    local server = helper.start { app = dir, env = { JOBS_CONCURRENCY = "1" } }
    finally(function() server:stop(); helper.remove(dir) end)
    local running = enqueue(server, "job=version&wait=" .. 1 * helper.slow)
    local queued = enqueue(server, "job=version&wait=0")
    assert.truthy(helper.eventually(function()
      local _, st = status_at(server, running)
      return st.state == "running"
    end))
    helper.write_file(dir .. "/_lib/version.lua", [[
local moonring = require "moonring"
require("moonring.jobs").define("version", function(a)
  moonring.sleep(a.wait or 0)
  return "v2"
end)
return true
]])
    local before = server:count_stderr("] reloaded ")
    assert.is_true(server:signal("HUP"))
    assert.truthy(server:wait_stderr_count("] reloaded ", before + 1, 5 * helper.slow),
      "no reload logged:\n" .. server:stderr_text())
    local _, st = status_at(server, queued)
    assert.are.equal("queued", st.state)          -- still waiting for the one slot
    local first = finished(server, running)
    assert.are.equal("done", first.state)
    assert.are.equal("v1", first.result)           -- started before the reload: old code
    local second = finished(server, queued)
    assert.are.equal("done", second.state)
    assert.are.equal("v2", second.result)          -- started after it: the new definition
  end)

  it("keeps the running code's definition when a reload fails", function()
    local dir = helper.app(APP)
    local server = helper.start { app = dir }
    finally(function() server:stop(); helper.remove(dir) end)
    -- redefines the job, then fails at top level: the reload is refused
    helper.write_file(dir .. "/_lib/version.lua", [[
local moonring = require "moonring"
require("moonring.jobs").define("version", function() return "broken" end)
error("this reload fails-9c2d")
]])
    local before = server:count_stderr("reload failed")
    assert.is_true(server:signal("HUP"))
    assert.truthy(server:wait_stderr_count("reload failed", before + 1, 5 * helper.slow))
    local location = enqueue(server, "job=version")
    local st = finished(server, location)
    assert.are.equal("v1", st.result)
  end)
end)

describe("moonring.jobs in redis", function()
  it("answers 503 while Redis cannot be reached, and logs the outage once", function()
    local down = helper.redis_start()
    finally(function() down.stop() end)
    local env = { JOBS_REDIS_PORT = tostring(down.port), JOBS_PREFIX = unique_prefix() }
    helper.with_server({ files = APP, env = env }, function(server)
      assert.are.equal("done", finished(server, (enqueue(server, "job=add&x=1&y=1&wait=0"))).state)
      down.stop()
      local res = post(server, "/work?job=add&x=1&y=2")
      assert.are.equal(503, res.status)
      assert.are.equal("1", res.headers["retry-after"])
      assert.matches("the job store is unavailable: ", cjson.decode(res.body).error)
      local code = status_at(server, "/jobs/0123456789abcdef01234567")
      assert.are.equal(503, code)
      helper.sleep(2.5)                              -- the runners keep retrying
      local outage = "moonring.jobs: redis 127.0.0.1:" .. down.port .. ": "
      assert.are.equal(1, server:count_stderr(outage), server:stderr_text())
      helper.assert_serves(server.port, "/state")
    end)
  end)
end)

describe("moonring.jobs in redis across processes", function()
  it("runs a job enqueued by a process with run = false in another process", function()
    local dir = helper.app(APP)
    local env = env_for("redis", { JOBS_RUN = "0" })
    local a = helper.start { app = dir, env = env }
    local b
    finally(function()
      a:stop()
      if b then b:stop() end
      helper.remove(dir)
    end)
    local location, id = enqueue(a, "job=add&x=20&y=22&wait=0")
    helper.sleep(0.5 * helper.slow)
    local _, st = status_at(a, location)
    assert.are.equal("queued", st.state)          -- nobody runs it yet
    assert.are.equal(0, st.attempts)
    assert.are.same({ id }, rds:cmd("LRANGE", env.JOBS_PREFIX .. ":queue", 0, -1))
    env.JOBS_RUN = "1"
    b = helper.start { app = dir, env = env }
    st = finished(a, location)                    -- A reads what B recorded
    assert.are.equal("done", st.state)
    assert.are.equal(42, st.result.sum)
    assert.are.equal(b.pid, st.result.pid)
    assert.are.equal(0, rds:cmd("LLEN", env.JOBS_PREFIX .. ":queue"))
    assert.are.equal(0, rds:cmd("LLEN", env.JOBS_PREFIX .. ":running"))
  end)

  it("requeues a job whose runner died once its lease expires, and another process runs it", function()
    local dir = helper.app(APP)
    local env = env_for("redis", { JOBS_LEASE = "1" })
    local first = helper.start { app = dir, env = env }
    local second
    finally(function()
      first:stop()
      if second then second:stop() end
      helper.remove(dir)
    end)
    local location = enqueue(first, "job=add&x=1&y=2&wait=" .. 3 * helper.slow)
    assert.truthy(helper.eventually(function()
      local _, st = status_at(first, location)
      return st.state == "running"
    end))
    first:signal("KILL")                            -- dies holding the job
    first:wait(5)
    assert.are.same({ location:match("[^/]+$") }, rds:cmd("LRANGE", env.JOBS_PREFIX .. ":running", 0, -1))
    second = helper.start { app = dir, env = env }
    local st = finished(second, location, 15 * helper.slow)
    assert.are.equal("done", st.state)
    assert.are.equal(2, st.attempts)
    assert.are.equal(second.pid, st.result.pid)
    assert.matches("1 job%(s%) requeued: their runner's lease expired", second:stderr_text())
  end)
end)
