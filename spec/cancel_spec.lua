-- The client leaving (DESIGN.md section 4.5): a reset, or the client's FIN
-- while its request is unfinished, cancels the request: its waits end with
-- "cancelled", its spawned tasks stop, its <close> variables are closed,
-- req.on_close callbacks run, and the access log says 499. A client whose
-- request is complete before its FIN still gets its answer.
local helper = require "helper"

local KIB = 1024

local APP = {
  ["index.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
  ["_lib/state.lua"] = [[return { started = {}, after = {}, results = {}, on_close = {}, closed = {} }]],
  ["state.lua"] = helper.STATE_ROUTE,
  -- the work after a 10 s sleep, in the handler and in a spawned task
  ["sleep10.lua"] = [[
local moonring = require "moonring"
local state = require "_lib.state"
return function(req)
  local key = req.query_string or "-"
  moonring.spawn(function()
    state.started[key .. ":task"] = true
    moonring.sleep(10)
    state.after[key .. ":task"] = true
  end)
  state.started[key .. ":main"] = true
  moonring.sleep(10)
  state.after[key .. ":main"] = true
  return { status = 200, body = "woke\n" }
end
]],
  -- what a protected 10 s sleep returns, in the handler and in a spawned task
  ["pcall10.lua"] = [[
local moonring = require "moonring"
local state = require "_lib.state"
return function(req)
  local key = req.query_string or "-"
  moonring.spawn(function()
    state.started[key .. ":task"] = true
    state.results[key .. ":task"] = { pcall(moonring.sleep, 10) }
  end)
  state.started[key .. ":main"] = true
  state.results[key .. ":main"] = { pcall(moonring.sleep, 10) }
  return { status = 200, body = "after\n" }
end
]],
  -- req.on_close reasons, by key; ?k=KEY[&sleep]
  ["onclose.lua"] = [[
local moonring = require "moonring"
local state = require "_lib.state"
return function(req)
  local qs = req.query_string or ""
  local key = qs:match("k=([%w%-]+)")
  local reasons = {}
  state.on_close[key] = reasons
  req.on_close(function(reason) reasons[#reasons + 1] = reason end)
  state.started[key] = true
  if qs:find("sleep", 1, true) then moonring.sleep(10) end
  return { status = 200, body = "done\n" }
end
]],
  -- to-be-closed variables in a handler and its spawned task, both sleeping
  ["tbc.lua"] = [[
local moonring = require "moonring"
local state = require "_lib.state"
local function guard(name)
  return setmetatable({}, { __close = function(_, err) state.closed[name] = tostring(err) end })
end
return function(req)
  local key = req.query_string or "-"
  moonring.spawn(function()
    local g <close> = guard(key .. ":task")
    state.started[key .. ":task"] = true
    moonring.sleep(10)
  end)
  local g <close> = guard(key .. ":main")
  state.started[key .. ":main"] = true
  moonring.sleep(10)
  return { status = 200, body = "not cancelled\n" }
end
]],
  -- sync handlers that never wait
  ["hello.lua"] = [[return function(req) return { status = 200, body = "hello " .. (req.query_string or "") .. "\n" } end]],
  ["iter.lua"] = [[
return function(req)
  local parts, i = { "it", "er", "ated\n" }, 0
  return { status = 200, body = function() i = i + 1 return parts[i] end }
end
]],
  -- a slow first request, for a pipeline the server stops reading
  ["slow3.lua"] = [[
local moonring = require "moonring"
local state = require "_lib.state"
return function(req)
  state.started.slow3 = true
  state.results.slow3 = { pcall(moonring.sleep, 3) }
  return { status = 200, body = "slow\n" }
end
]],
}

local function with_app(args, fn)
  return helper.with_server({ files = APP, args = args or {} }, fn)
end

local state_of = helper.state

local wait_state = helper.wait_state

-- Opens a connection, sends GET path (keep-alive: no FIN from the request
-- itself) and waits until the handler has marked `started` entries.
local function start_request(server, path, started_keys)
  local c = helper.connect(server.port)
  c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\n\r\n")
  local st, ok = wait_state(server, function(s)
    for _, k in ipairs(started_keys) do if not s.started[k] then return false end end
    return true
  end, 3 * helper.slow)
  assert.is_true(ok, "the handler did not start: " .. require("pl.pretty").write(st.started or {}))
  return c
end

local leave = {
  { "a reset", function(c) c:reset() end },
  { "a FIN", function(c) c:shutdown("send") end },
}

for _, how in ipairs(leave) do
  describe("a client leaving with " .. how[1] .. " while the handler sleeps", function()
    it("cancels the handler and its spawned task: nothing after their sleeps runs", function()
      with_app(nil, function(server)
        local key = "gone-" .. how[1]:gsub("%W", "")
        local c = start_request(server, "/sleep10?" .. key, { key .. ":main", key .. ":task" })
        how[2](c)
        helper.sleep(1)
        local st = state_of(server)
        c:close()
        assert.is_nil(st.after[key .. ":main"], "the handler went on after its sleep")
        assert.is_nil(st.after[key .. ":task"], "the spawned task went on after its sleep")
        helper.assert_serves(server.port, "/")
      end)
    end)

    it("makes pcall(moonring.sleep, 10) return false, \"cancelled\" in the handler and in its spawned task", function()
      with_app(nil, function(server)
        local key = "pcall-" .. how[1]:gsub("%W", "")
        local c = start_request(server, "/pcall10?" .. key, { key .. ":main", key .. ":task" })
        local t0 = helper.now()
        how[2](c)
        local st, ok = wait_state(server, function(s)
          return s.results[key .. ":main"] and s.results[key .. ":task"]
        end, 2 * helper.slow)
        c:close()
        assert.is_true(ok, string.format("the sleeps had not ended %.1fs after the client left", helper.now() - t0))
        assert.are.same({ false, "cancelled" }, st.results[key .. ":main"])
        assert.are.same({ false, "cancelled" }, st.results[key .. ":task"])
        helper.assert_serves(server.port, "/")
      end)
    end)

    it("is logged with status 499", function()
      with_app(nil, function(server)
        local key = "log-" .. how[1]:gsub("%W", "")
        local c = start_request(server, "/sleep10?" .. key, { key .. ":main" })
        how[2](c)
        local pat = '"GET /sleep10%?' .. key:gsub("%-", "%%-") .. ' HTTP/1%.1" 499 '
        local text = server:wait_stderr(pat, 3 * helper.slow)
        c:close()
        assert.is_truthy(text, "no 499 access line:\n" .. server:stderr_text())
      end)
    end)

    it("closes the <close> variables of the handler and of its spawned task", function()
      with_app(nil, function(server)
        local key = "tbc-" .. how[1]:gsub("%W", "")
        local c = start_request(server, "/tbc?" .. key, { key .. ":main", key .. ":task" })
        how[2](c)
        local st, ok = wait_state(server, function(s)
          return s.closed[key .. ":main"] and s.closed[key .. ":task"]
        end, 2 * helper.slow)
        c:close()
        assert.is_true(ok, "a <close> variable was not closed: " .. require("pl.pretty").write(st.closed))
        -- the sleep raised "cancelled": that is the error the __close saw
        assert.are.equal("cancelled", st.closed[key .. ":main"])
        assert.are.equal("cancelled", st.closed[key .. ":task"])
        helper.assert_serves(server.port, "/")
      end)
    end)
  end)
end

describe("req.on_close", function()
  local function reasons_after(server, key, timeout)
    wait_state(server, function(s)
      return s.on_close[key] and #s.on_close[key] > 0
    end, timeout or 2 * helper.slow)
    helper.sleep(0.3)                   -- a second call would come now
    return state_of(server).on_close[key]
  end

  it("runs once with \"closed\" when the client disconnects", function()
    with_app(nil, function(server)
      local c = start_request(server, "/onclose?k=gone&sleep", { "gone" })
      c:reset()
      assert.are.same({ "closed" }, reasons_after(server, "gone"))
    end)
  end)

  it("runs once with \"closed\" when the client sends its FIN while the handler sleeps", function()
    with_app(nil, function(server)
      local c = start_request(server, "/onclose?k=fin&sleep", { "fin" })
      c:shutdown("send")
      assert.are.same({ "closed" }, reasons_after(server, "fin"))
      c:close()
    end)
  end)

  it("runs once with \"done\" after a normal response", function()
    with_app(nil, function(server)
      local res = helper.get(server.port, "/onclose?k=ok")
      assert.are.equal(200, res.status)
      assert.are.equal("done\n", res.body)
      assert.are.same({ "done" }, reasons_after(server, "ok"))
    end)
  end)

  it("runs once with \"done\" for each request of a keep-alive connection", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      c:send("GET /onclose?k=ka1 HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.are.equal(200, c:response().status)
      c:send("GET /onclose?k=ka2 HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.are.equal(200, c:response().status)
      assert.are.same({ "done" }, reasons_after(server, "ka1"))
      assert.are.same({ "done" }, reasons_after(server, "ka2"))
      c:close()
    end)
  end)

  it("runs once with \"timeout\" at the --request-timeout deadline", function()
    with_app({ "--request-timeout", "0.5" }, function(server)
      local res = helper.get(server.port, "/onclose?k=late&sleep", { timeout = 4 * helper.slow })
      assert.are.equal(504, res.status)
      assert.are.same({ "timeout" }, reasons_after(server, "late"))
    end)
  end)
end)

describe("a complete request followed by the client's FIN", function()
  local cases = {
    { "a sync handler, HTTP/1.1", "GET /hello?fin HTTP/1.1\r\nHost: x\r\n\r\n", "hello fin\n" },
    { "a sync handler, HTTP/1.0", "GET /hello?fin10 HTTP/1.0\r\n\r\n", "hello fin10\n" },
    { "a sync handler with an iterator body", "GET /iter HTTP/1.1\r\nHost: x\r\n\r\n", "iterated\n" },
  }
  for _, case in ipairs(cases) do
    it("still gets its response (" .. case[1] .. ")", function()
      with_app(nil, function(server)
        local c = helper.connect(server.port)
        c:send(case[2])
        c:shutdown("send")
        local text, ended = c:read_until_close(3 * helper.slow)
        c:close()
        assert.are.equal("closed", ended, "connection not closed after the response: " .. text)
        local list, err = helper.parse(text)
        assert.is_nil(err, tostring(err) .. "; raw: " .. text)
        assert.are.equal(1, #list, "raw: " .. text)
        assert.are.equal(200, list[1].status)
        assert.are.equal(case[3], list[1].body)
        assert.is_falsy(server:stderr_text():find('" 499 ', 1, true), "logged as cancelled:\n" .. server:stderr_text())
      end)
    end)
  end
end)

describe("a client reset while the server has stopped reading its input", function()
  it("cancels the slow first request of a pipeline over 64 KiB", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      local pad = string.rep("p", 1000)
      local reqs = { "GET /slow3 HTTP/1.1\r\nHost: x\r\n\r\n" }
      local size = #reqs[1]
      while size < 160 * KIB do
        local r = "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " .. pad .. "\r\n\r\n"
        reqs[#reqs + 1] = r
        size = size + #r
      end
      assert(c:send(table.concat(reqs)))
      local _, started = wait_state(server, function(s) return s.started.slow3 end, 2 * helper.slow)
      assert.is_true(started, "the first request did not start")
      helper.sleep(0.3)                 -- the server has read what it will read
      local t0 = helper.now()
      c:reset()
      local st, ok = wait_state(server, function(s) return s.results.slow3 end, 1.5 * helper.slow)
      local elapsed = helper.now() - t0
      assert.is_true(ok, string.format(
        "the first handler was still sleeping %.1fs after the client reset", elapsed))
      assert.are.same({ false, "cancelled" }, st.results.slow3)
      helper.assert_serves(server.port, "/")
    end)
  end)
end)
