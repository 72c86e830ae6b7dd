-- Worker processes (issue 8, /work/notes/reload.md): with --workers N a
-- supervisor binds once and runs N workers on the shared socket. It restarts
-- a worker that dies, reloads every worker on SIGHUP, replaces them all on
-- SIGUSR2 without refusing a connection, and exits 0 on SIGTERM. Request ids
-- stay unique across workers.
local helper = require "helper"

local APP = {
  -- "<worker id> <worker pid> <request id>"
  ["pid.lua"] = [[
local moonring = require "moonring"
return function(req)
  local w = moonring.worker()
  return { status = 200, body = w.id .. " " .. w.pid .. " " .. tostring(req.id) }
end
]],
}

local function version_route(v)
  return string.format([[
local moonring = require "moonring"
return function(req) return { status = 200, body = %q .. " " .. moonring.worker().pid } end
]], v)
end

local function with_workers(n, fn, extra)
  local args = { "--workers", tostring(n) }
  for _, a in ipairs(extra and extra.args or {}) do args[#args + 1] = a end
  local files = {}
  for k, v in pairs(APP) do files[k] = v end
  for k, v in pairs(extra and extra.files or {}) do files[k] = v end
  return helper.with_server({ files = files, args = args }, fn)
end

-- A live process (not a zombie) with this pid?
local function alive(pid)
  local stat = helper.read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and stat:match("^%d+ %b() (%a)") ~= "Z"
end

local function parent_of(pid)
  local stat = helper.read_file("/proc/" .. pid .. "/stat") or ""
  return tonumber(stat:match("^%d+ %b() %a (%d+)"))
end

-- Opens `n` fresh connections at once, sends GET `path` on each, then reads
-- every answer. Returns an array of { res = response } or { err = text }:
-- refused connections, resets and cut responses are errors, not failures
-- of the spec, so callers can count them.
local function batch(port, n, path)
  local conns, out = {}, {}
  for i = 1, n do
    local ok, c = pcall(helper.connect, port, { connect_timeout = 5 })
    if not ok then
      out[i] = { err = "connect: " .. tostring(c) }
    else
      conns[i] = c
      local sent, err = c:send(helper.build_request(port, "GET", path))
      if not sent then out[i] = { err = "send: " .. tostring(err) } end
    end
  end
  for i = 1, n do
    local c = conns[i]
    if c and not out[i] then
      local text, ended, err = c:read_until_close(5 * helper.slow)
      local parsed, perr = helper.parse(text)
      if parsed[1] and not perr then
        out[i] = { res = parsed[1] }
      else
        out[i] = { err = string.format("%s (%s%s): %q", perr or "no response", ended,
          err and (", " .. err) or "", text) }
      end
    end
    if c then c:close() end
  end
  return out
end

-- One GET /pid answer as { id = worker number, pid =, rid = request id }.
local function who(res)
  local id, pid, rid = res.body:match("^(%d+) (%d+) (%d+)$")
  assert(id, "unexpected /pid answer: " .. res.status .. " " .. res.body)
  return { id = tonumber(id), pid = tonumber(pid), rid = math.tointeger(tonumber(rid)) }
end

-- Asks /pid on fresh connections (batches of 8) until `want` distinct
-- worker pids answered, or `rounds` batches. Returns the map pid -> worker
-- number and the array of every answer (who()).
local function workers_seen(port, want, rounds)
  local pids, answers, count = {}, {}, 0
  for _ = 1, rounds or 60 do
    for _, r in ipairs(batch(port, 8, "/pid")) do
      assert(r.res, r.err)
      assert.are.equal(200, r.res.status, r.res.body)
      local w = who(r.res)
      answers[#answers + 1] = w
      if not pids[w.pid] then pids[w.pid], count = w.id, count + 1 end
    end
    if count >= want then break end
  end
  return pids, answers, count
end

local function keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = tostring(k) end
  table.sort(out)
  return table.concat(out, ", ")
end

-- Runs batches of 4 GET `path` until stop() holds (checked after each batch,
-- at most `timeout` seconds), calling at_round(i) before batch i. Returns
-- the errors and non-200 answers as text lines, the answers, and how many
-- requests were made.
local function load_until(port, path, stop, at_round, timeout)
  local failures, answers, n = {}, {}, 0
  local deadline = helper.now() + timeout
  local round = 0
  repeat
    round = round + 1
    if at_round then at_round(round) end
    for _, r in ipairs(batch(port, 4, path)) do
      n = n + 1
      if not r.res then failures[#failures + 1] = "request " .. n .. ": " .. r.err
      elseif r.res.status ~= 200 then failures[#failures + 1] = "request " .. n .. ": " .. r.res.status .. " " .. r.res.body
      else answers[#answers + 1] = { round = round, res = r.res } end
    end
  until stop(round, answers) or helper.now() > deadline
  return failures, answers, n
end

describe("--workers", function()
  it("prints one listening line, and two workers, children of the server, answer", function()
    with_workers(2, function(server)
      assert.are.equal("listening on http://127.0.0.1:" .. server.port .. "\n", server:stdout_text())
      local pids, _, count = workers_seen(server.port, 2)
      assert.are.equal(2, count, "pids that answered: " .. keys(pids))
      for pid, id in pairs(pids) do
        assert.are_not.equal(server.pid, pid)
        assert.are.equal(server.pid, parent_of(pid), "worker " .. id .. " is not the server's child")
        assert.matches("%[info%] worker " .. id .. " started %(pid " .. pid .. "%)", server:stderr_text())
      end
      assert.are.equal("listening on http://127.0.0.1:" .. server.port .. "\n", server:stdout_text())
    end)
  end)

  it("numbers request ids by worker: worker k's ids start at k * 10^12 + 1", function()
    with_workers(2, function(server)
      local pids, answers, count = workers_seen(server.port, 2)
      assert.are.equal(2, count, "pids that answered: " .. keys(pids))
      local seen, lowest = {}, {}
      for _, w in ipairs(answers) do
        assert.is_nil(seen[w.rid], "request id " .. tostring(w.rid) .. " given twice")
        seen[w.rid] = true
        local base = w.id * 1000000000000
        assert(w.rid > base and w.rid <= base + 1000000000000,
          string.format("worker %d gave request id %s", w.id, tostring(w.rid)))
        lowest[w.id] = math.min(lowest[w.id] or math.huge, w.rid)
      end
      for id, rid in pairs(lowest) do
        assert.are.equal(id * 1000000000000 + 1, rid, "first request id of worker " .. id)
      end
      -- the access lines of both workers are whole lines
      assert.is_truthy(server:wait_stderr_count(" id=", #answers, 3 * helper.slow), server:stderr_text())
      for line in server:stderr_text():gmatch("[^\n]+") do
        if not line:match("^%S+ %[%a+%] ") then
          assert.matches('^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ %S+ "[^"]*" %d+ %d+ [%d.]+ms id=%d+$', line)
        end
      end
    end)
  end)

  it("without --workers, moonring.worker() is worker 0, the server's own pid", function()
    helper.with_server({ files = APP }, function(server)
      local w = who(helper.get(server.port, "/pid"))
      assert.are.same({ 0, server.pid }, { w.id, w.pid })
      assert.are.equal(1, w.rid)
    end)
  end)

  it("starts one worker per CPU with --workers auto", function()
    with_workers("auto", function(server)
      assert.are.equal("listening on http://127.0.0.1:" .. server.port .. "\n", server:stdout_text())
      local r = batch(server.port, 1, "/pid")[1]
      assert(r.res, r.err)
      assert.are_not.equal(server.pid, who(r.res).pid)
    end)
  end)

  it("keeps answering when a worker is killed under load, and starts a replacement", function()
    with_workers(2, function(server)
      local old, _, count = workers_seen(server.port, 2)
      assert.are.equal(2, count, "pids that answered: " .. keys(old))
      local victim, victim_id = next(old)
      local new_pid
      local failures, _, n = load_until(server.port, "/pid", function(round, answers)
        for i = #answers, 1, -1 do
          local a = answers[i]
          if a.round <= 3 then break end
          local w = who(a.res)
          if not old[w.pid] then new_pid = new_pid or w.pid end
        end
        return new_pid and round >= 13
      end, function(round)
        if round == 3 then assert(os.execute("kill -KILL " .. victim)) end
      end, 10 * helper.slow)
      assert.are.equal(0, #failures, #failures .. " of " .. n .. " requests failed:\n" .. table.concat(failures, "\n"))
      assert(new_pid, "no new worker answered; stderr:\n" .. server:stderr_text())
      local text = server:stderr_text()
      assert.matches("%[warn%] worker " .. victim_id .. " %(pid " .. victim .. "%) killed by signal 9; restarting", text)
      local new_id = tonumber(text:match("%[info%] worker (%d+) started %(pid " .. new_pid .. "%)"))
      assert(new_id, "no start line for pid " .. new_pid .. ":\n" .. text)
      for _, id in pairs(old) do assert.are_not.equal(id, new_id, "worker number reused") end
      assert.is_false(alive(victim))
    end)
  end)

  it("reloads every worker on SIGHUP", function()
    with_workers(2, function(server)
      local pids, _, count = workers_seen(server.port, 2)
      assert.are.equal(2, count, "pids that answered: " .. keys(pids))
      assert.matches("^v1 ", helper.get(server.port, "/v").body)
      helper.replace_file(server.app .. "/v.lua", version_route("v2"))
      local reloads = server:count_stderr(": reloaded ")
      assert.is_true(server:signal("HUP"))
      assert.is_truthy(server:wait_stderr_count(": reloaded ", reloads + 2, 5 * helper.slow),
        "not two reload lines:\n" .. server:stderr_text())
      -- from now on every answer is v2, from both workers
      local by = {}
      local failures, answers = load_until(server.port, "/v", function(_, answers)
        for _, a in ipairs(answers) do by[tonumber(a.res.body:match("(%d+)$"))] = true end
        return by[next(pids)] and by[next(pids, next(pids))]
      end, nil, 10 * helper.slow)
      assert.are.equal(0, #failures, table.concat(failures, "\n"))
      for _, a in ipairs(answers) do assert.matches("^v2 %d+$", a.res.body) end
      for pid in pairs(pids) do assert.is_true(by[pid], "worker pid " .. pid .. " never answered v2") end
    end, { files = { ["v.lua"] = version_route("v1") } })
  end)

  it("replaces every worker on SIGUSR2 without refusing a connection", function()
    with_workers(2, function(server)
      local old, _, count = workers_seen(server.port, 2)
      assert.are.equal(2, count, "pids that answered: " .. keys(old))
      -- the load runs from before SIGUSR2 until the old workers have exited
      local function old_alive()
        for pid in pairs(old) do if alive(pid) then return true end end
        return false
      end
      local restarted_at, drained_at
      local failures, _, n = load_until(server.port, "/pid", function(round)
        if not restarted_at and server:stderr_text():find("[info] workers restarted", 1, true) then
          restarted_at = round
        end
        if restarted_at and not drained_at and not old_alive() then drained_at = round end
        return drained_at and round >= drained_at + 5
      end, function(round)
        if round == 3 then assert.is_true(server:signal("USR2")) end
      end, 20 * helper.slow)
      assert.are.equal(0, #failures, #failures .. " of " .. n .. " requests failed:\n" .. table.concat(failures, "\n"))
      assert(restarted_at, "no 'workers restarted' line:\n" .. server:stderr_text())
      assert(drained_at, "old workers still running: " .. keys(old))
      local text = server:stderr_text()
      assert.is_truthy(text:find("[info] restarting workers", 1, true))
      assert.is_true(text:find("[info] restarting workers", 1, true) < text:find("[info] workers restarted", 1, true))
      -- afterwards only new workers answer, both of them
      local new, _, new_count = workers_seen(server.port, 2)
      assert.are.equal(2, new_count, "pids that answered: " .. keys(new))
      for pid in pairs(new) do assert.is_nil(old[pid], "old pid " .. pid .. " still answers") end
      assert.are.equal("listening on http://127.0.0.1:" .. server.port .. "\n", server:stdout_text())
    end)
  end)

  it("reloads every worker when a file is saved under --watch", function()
    with_workers(2, function(server)
      local pids, _, count = workers_seen(server.port, 2)
      assert.are.equal(2, count, "pids that answered: " .. keys(pids))
      local reloads = server:count_stderr(": reloaded ")
      helper.write_file(server.app .. "/v.lua", version_route("v2"))
      assert.is_truthy(server:wait_stderr_count(": reloaded ", reloads + 2, 3 * helper.slow),
        "not two reload lines:\n" .. server:stderr_text())
      local failures, answers = load_until(server.port, "/v", function() return true end, nil, 1)
      assert.are.equal(0, #failures, table.concat(failures, "\n"))
      for _, a in ipairs(answers) do assert.matches("^v2 %d+$", a.res.body) end
    end, { args = { "--watch" }, files = { ["v.lua"] = version_route("v1") } })
  end)

  it("exits 1 when the app does not load, naming the file", function()
    local app = helper.app { ["bad.lua"] = "return function(a, b) end\n" }
    local r = helper.run({ "--port", "0", "--workers", "2", app }, { timeout = 10 * helper.slow })
    assert.are.equal(1, r.status, r.stderr)
    assert.are.equal("", r.stdout)
    assert.matches("bad%.lua:1: ", r.stderr)
  end)

  it("keeps the old workers serving when the new ones of a SIGUSR2 cannot load the app", function()
    with_workers(2, function(server)
      local old, _, count = workers_seen(server.port, 2)
      assert.are.equal(2, count, "pids that answered: " .. keys(old))
      helper.write_file(server.app .. "/v.lua", "return function(a, b) end\n")
      assert.is_true(server:signal("USR2"))
      assert.is_truthy(server:wait_stderr("%[error%] restart failed", 10 * helper.slow),
        "no 'restart failed' line:\n" .. server:stderr_text())
      assert.is_nil(server:stderr_text():find("workers restarted", 1, true))
      local pids, answers = workers_seen(server.port, 2)
      for pid in pairs(pids) do assert.is_truthy(old[pid], "pid " .. pid .. " is not an old worker") end
      assert.matches("^v1 ", helper.get(server.port, "/v").body)
      assert.is_true(#answers > 0)

      -- fixed, the next SIGUSR2 goes through
      helper.write_file(server.app .. "/v.lua", version_route("v2"))
      assert.is_true(server:signal("USR2"))
      assert.is_truthy(server:wait_stderr("workers restarted", 10 * helper.slow), server:stderr_text())
      assert.is_truthy(helper.eventually(function()
        return helper.get(server.port, "/v").body:match("^v2 ")
      end, 3 * helper.slow), "the new workers do not serve v2")
    end, { files = { ["v.lua"] = version_route("v1") } })
  end)

  it("exits 0 on SIGTERM, and its workers with it", function()
    local server = helper.start { app = helper.app(APP), args = { "--workers", "2" } }
    local pids = {}
    finally(function()
      server:stop()
      for pid in pairs(pids) do
        local cmd = helper.read_file("/proc/" .. pid .. "/cmdline") or ""
        if alive(pid) and cmd:find("moonring", 1, true) then os.execute("kill -KILL " .. pid) end
      end
    end)
    local count
    pids, _, count = workers_seen(server.port, 2)
    assert.are.equal(2, count, "pids that answered: " .. keys(pids))
    assert.is_true(server:signal("TERM"))
    assert.are.equal(0, server:wait(10 * helper.slow), server:stderr_text())
    assert.is_truthy(helper.eventually(function()
      for pid in pairs(pids) do if alive(pid) then return false end end
      return true
    end, 5 * helper.slow), "workers outlived the server: " .. keys(pids))
  end)

  it("does not lose a worker to a SIGHUP sent while the workers load the app; each reloads once ready", function()
    local files = {
      ["pid.lua"] = APP["pid.lua"],
      -- the first load only (per worker) takes a second of CPU
      ["slow.lua"] = [[
local moonring = require "moonring"
local boot = moonring.state("boot")
if not boot.done then
  local t = os.clock() while os.clock() - t < 1 do end
  boot.done = true
end
return function(req) return { status = 200, body = "slow " .. moonring.worker().pid } end
]],
    }
    local server = helper.start { app = helper.app(files), args = { "--workers", "2" }, no_wait = true }
    finally(function() server:stop() end)
    assert.is_truthy(server:wait_stderr("worker %d+ started[^\n]*\n[^\n]*worker %d+ started", 5 * helper.slow),
      "not two worker start lines:\n" .. server:stderr_text())
    helper.sleep(0.3)
    assert.is_true(server:signal("HUP"))
    assert.are.equal("", server:stdout_text(), "the workers were ready before SIGHUP: the spec proves nothing")

    local ok, err = server:wait_listening(15 * helper.slow)
    assert(ok, err)
    local pids, _, count = workers_seen(server.port, 2)
    assert.are.equal(2, count, "pids that answered: " .. keys(pids) .. "\n" .. server:stderr_text())
    for _, r in ipairs(batch(server.port, 4, "/slow")) do
      assert(r.res, r.err)
      assert.matches("^slow %d+$", r.res.body)
    end
    -- each worker got the SIGHUP once it was ready: one reload each
    assert.is_truthy(server:wait_stderr_count(": reloaded ", 2, 5 * helper.slow),
      "not two reload lines:\n" .. server:stderr_text())
    helper.sleep(0.3 * helper.slow)
    local text = server:stderr_text()
    assert.are.equal(2, helper.count(text, ": reloaded "), text)
    local reloaded = {}
    for id in text:gmatch("worker (%d+): reloaded ") do reloaded[tonumber(id)] = (reloaded[tonumber(id)] or 0) + 1 end
    for _, id in pairs(pids) do assert.are.equal(1, reloaded[id], "worker " .. id .. " reloads:\n" .. text) end
    assert.is_nil(text:find("killed by signal 1", 1, true), text)
    assert.is_nil(text:find("restarting", 1, true), text)
    assert.is_nil(server:exit_status())
  end)

  it("refuses --worker-id when not started by a supervisor: exit 1 with a message", function()
    local app = helper.app(APP)
    local r = helper.run({ "--port", "0", "--worker-id", "1", app }, { timeout = 5 * helper.slow })
    assert.are.equal(1, r.status, r.stderr)
    assert.are.equal("", r.stdout)
    assert.matches("%-%-worker%-id", r.stderr)
    assert.is_nil(r.stderr:find("listening", 1, true))
  end)
end)
