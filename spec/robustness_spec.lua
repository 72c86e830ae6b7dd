-- Robustness: handler code the coroutine runner must survive (waiting where
-- a coroutine cannot yield, error objects that cannot be printed,
-- to-be-closed variables, informational statuses) and clients the connection
-- code must serve or shed correctly (half-closed clients, clients that stop
-- reading, bodies that stop coming or keep coming, 100-continue with a
-- streamed response). Each case used to crash the server, abort it, or
-- corrupt or truncate a response; helper's stop() fails a spec whose server
-- died or printed a sanitizer report.
local helper = require "helper"

local MIB = 1024 * 1024

-- Large bodies with a repeating, position-dependent pattern: a truncated or
-- reordered body does not compare equal.
local function pattern_body(n)
  local unit = "0123456789abcdefghijklmnopqrstuv" -- 32 bytes
  return string.rep(unit, n // #unit) .. unit:sub(1, n % #unit)
end

local BIG_SRC = [[
local n = %d
local unit = "0123456789abcdefghijklmnopqrstuv"
local body = string.rep(unit, n // #unit) .. unit:sub(1, n %% #unit)
return function(req) return { status = 200, body = body } end
]]

local APP = {
  ["index.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
  -- state shared by every route of the app (a module is loaded once)
  ["_lib/state.lua"] = [[return { tbc_closed = 0, cancel_close_started = 0 }]],
  ["state.lua"] = helper.STATE_ROUTE,
  ["slow.lua"] = [[
local moonring = require "moonring"
return function(req)
  local s = tonumber((req.query_string or ""):match("s=([%d.]+)")) or 0.3
  moonring.sleep(s)
  return { status = 200, body = "slept " .. s .. "\n" }
end
]],
  ["say.lua"] = [[return function(req) return { status = 200, body = (req.query_string or "") .. "\n" } end]],
  -- F1: waiting where the coroutine cannot yield
  ["sortsleep.lua"] = [[
local moonring = require "moonring"
return function(req)
  local t = { 3, 1, 2 }
  table.sort(t, function(a, b) moonring.sleep(0.3) return a < b end)
  return { status = 200, body = "sorted\n" }
end
]],
  ["gsubread.lua"] = [[
return function(req)
  local parts = {}
  ("ab"):gsub(".", function(c) parts[#parts + 1] = req.body:read() end)
  return { status = 200, body = "read " .. #parts .. "\n" }
end
]],
  ["closesleep.lua"] = [[
local moonring = require "moonring"
local state = require "_lib.state"
return function(req)
  local guard <close> = setmetatable({}, { __close = function()
    state.cancel_close_started = state.cancel_close_started + 1
    moonring.sleep(0.3)
  end })
  moonring.sleep(5)
  return { status = 200, body = "not cancelled\n" }
end
]],
  -- F2: error objects whose text cannot be had
  ["tostringraises.lua"] = [[return function(req)
  error(setmetatable({}, { __tostring = function() error("tostring-raised-4d1e") end }))
end]],
  ["tostringtable.lua"] = [[return function(req)
  error(setmetatable({}, { __tostring = function() return {} end }))
end]],
  ["tostringnil.lua"] = [[return function(req)
  error(setmetatable({}, { __tostring = function() return nil end }))
end]],
  -- F3: a streamed response that reads the body as it goes
  ["streamecho.lua"] = [[
return function(req)
  return { status = 200, body = function() return req.body:read() end }
end
]],
  -- F7: a to-be-closed variable in a handler that errors
  ["tbcerror.lua"] = [[
local state = require "_lib.state"
return function(req)
  local guard <close> = setmetatable({}, { __close = function()
    state.tbc_closed = state.tbc_closed + 1
  end })
  error("handler-failed-6c0a")
end
]],
  -- large string bodies (the handlers do not read the request body)
  ["big1m.lua"] = string.format(BIG_SRC, 1 * MIB),
  ["big8m.lua"] = string.format(BIG_SRC, 8 * MIB),
  ["big16m.lua"] = string.format(BIG_SRC, 16 * MIB),
  -- 16 MiB streamed in 64 KiB chunks: the handler stays alive while it writes
  ["stream16m.lua"] = [[
local chunk = string.rep("s", 64 * 1024)
return function(req)
  local n = 0
  return { status = 200, body = function()
    n = n + 1
    if n <= 256 then return chunk end
  end }
end
]],
}
for _, st in ipairs { 100, 101, 199 } do
  APP["status" .. st .. ".lua"] = string.format(
    [[return function(req) return { status = %d, headers = { upgrade = "x" }, body = "x" } end]], st)
end

local function with_app(args, fn)
  return helper.with_server({ files = APP, args = args or {} }, fn)
end

-- Asserts that `path` on a fresh connection gets exactly one response, a 500,
-- and that the server then still serves.
local function expect_500(server, path)
  local text, info = helper.raw(server.port,
    "GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
  assert.is_true(info.closed, "connection not closed after the response: " .. text)
  local list, err = helper.parse(text)
  assert.is_nil(err, "unparsable response to " .. path .. ": " .. tostring(err) .. "\nraw: " .. text)
  assert.are.equal(1, #list, "expected exactly one response to " .. path .. ", raw: " .. text)
  assert.are.equal(500, list[1].status, "raw: " .. text)
  helper.assert_serves(server.port, "/")
  return list[1]
end

-- GET /slow?s=1 on a fresh connection, right now: must sleep its full second
-- (a stale wake-up left by an earlier request used to cut it short).
local function assert_full_sleep(server)
  local t0 = helper.now()
  local res = helper.get(server.port, "/slow?s=1", { timeout = 4 * helper.slow })
  local elapsed = helper.now() - t0
  assert.are.equal(200, res.status, res.raw)
  assert.are.equal("slept 1\n", res.body)
  assert.is_true(elapsed >= 0.95, string.format("/slow?s=1 answered after %.3fs, before its sleep was over", elapsed))
end

local state_of = helper.state

describe("a waiting primitive called where the coroutine cannot yield", function()
  it("moonring.sleep in a table.sort comparator: 500, and the next request on the connection sleeps its full time", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      local t0 = helper.now()
      -- pipelined: /slow starts as soon as /sortsleep failed, so a timer
      -- left behind by the failed sleep (0.3 s) would fire during it
      c:send("GET /sortsleep HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "GET /slow?s=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local first = c:response()
      assert.are.equal(500, first.status)
      local second = c:response({ timeout = 4 * helper.slow })
      local elapsed = helper.now() - t0
      assert.are.equal(200, second.status)
      assert.are.equal("slept 1\n", second.body)
      assert.is_true(elapsed >= 0.95, string.format("/slow?s=1 answered after %.3fs", elapsed))
      assert.is_true((c:wait_closed()))
      c:close()
      assert_full_sleep(server)
      helper.assert_serves(server.port, "/")
    end)
  end)

  it("req.body:read() in a string.gsub callback: 500, and the body arriving later wakes nothing", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      -- the handler starts at the head; the body is not there yet, so read() would have to wait
      c:send("POST /gsubread HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
      local first = c:response()
      assert.are.equal(500, first.status)
      local t0 = helper.now()
      c:send("ab" .. "GET /slow?s=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local second = c:response({ timeout = 4 * helper.slow })
      local elapsed = helper.now() - t0
      assert.are.equal(200, second.status)
      assert.are.equal("slept 1\n", second.body)
      assert.is_true(elapsed >= 0.95, string.format("/slow?s=1 answered after %.3fs", elapsed))
      c:close()
      helper.assert_serves(server.port, "/")
    end)
  end)

  it("moonring.sleep in a __close handler run when a client reset cancels the request", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      c:send("GET /closesleep HTTP/1.1\r\nHost: x\r\n\r\n")
      helper.sleep(0.2)              -- the handler is in its 5 s sleep
      c:reset()
      -- the cancelled handler's __close tried to sleep 0.3 s: a request
      -- started right now must not be woken by that
      assert_full_sleep(server)
      assert.are.equal(1, state_of(server).cancel_close_started,
        "the __close handler did not run when the request was cancelled")
      helper.assert_serves(server.port, "/")
    end)
  end)
end)

describe("a handler error whose object cannot be turned into text", function()
  for _, dev in ipairs { false, true } do
    local mode = dev and " (--dev)" or ""
    it("answers 500 when __tostring raises" .. mode, function()
      with_app(dev and { "--dev" } or {}, function(server)
        expect_500(server, "/tostringraises")
        assert.is_truthy(server:wait_stderr("tostringraises"), "the error was not logged:\n" .. server:stderr_text())
      end)
    end)

    it("answers 500 when __tostring returns a table or nil" .. mode, function()
      with_app(dev and { "--dev" } or {}, function(server)
        expect_500(server, "/tostringtable")
        expect_500(server, "/tostringnil")
        assert.is_truthy(server:wait_stderr("%(error object is a table value%)"),
          "the error was not logged by type:\n" .. server:stderr_text())
      end)
    end)
  end
end)

describe("Expect: 100-continue with a streamed response that reads the body", function()
  it("sends no 100 Continue once the response head is out, and the chunked body parses", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      c:send("POST /streamecho HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        .. "Content-Length: 5\r\nConnection: close\r\n\r\n")
      helper.sleep(0.3)              -- a client waiting for 100 Continue gives up and sends the body
      c:send("hello")
      local text, ended = c:read_until_close(3 * helper.slow)
      c:close()
      assert.are.equal("closed", ended, "connection not closed after the response; got: " .. text)
      local head_at = text:find("HTTP/1.1 200", 1, true)
      assert.is_truthy(head_at, "no 200 response head; raw: " .. string.format("%q", text))
      assert.is_nil(text:find("HTTP/1.1 100", head_at, true),
        "100 Continue sent after the 200 head; raw: " .. string.format("%q", text))
      local list, err = helper.parse(text)
      assert.is_nil(err, "unparsable response: " .. tostring(err) .. "; raw: " .. string.format("%q", text))
      local final = list[#list]
      assert.are.equal(200, final.status)
      assert.is_true(final.chunked)
      assert.are.equal("hello", final.body)
      for i = 1, #list - 1 do
        assert.are.equal(100, list[i].status, "unexpected response before the 200")
      end
      helper.assert_serves(server.port, "/")
    end)
  end)
end)

describe("a client that half-closes after its request", function()
  local cases = {
    { "HTTP/1.1 with Connection: close", "HTTP/1.1", "Connection: close\r\n" },
    { "HTTP/1.0", "HTTP/1.0", "" },
    { "HTTP/1.1 keep-alive", "HTTP/1.1", "" },
  }
  for _, case in ipairs(cases) do
    it("receives the whole 8 MiB body (" .. case[1] .. ")", function()
      with_app(nil, function(server)
        local c = helper.connect(server.port, { rcvbuf = 32 * 1024, timeout = 5 * helper.slow })
        c:send("GET /big8m " .. case[2] .. "\r\nHost: x\r\n" .. case[3] .. "\r\n")
        c:shutdown("send")
        helper.sleep(0.3)            -- the server sees the EOF with most of the body still queued
        local text, ended, err = c:read_until_close(10 * helper.slow)
        c:close()
        assert.are.equal("closed", ended, "connection not closed after the response")
        local res, perr = helper.parse(text)
        assert.is_nil(perr, string.format("response cut short: %s (%d bytes received, socket: %s)",
          tostring(perr), #text, tostring(err)))
        assert.are.equal(1, #res)
        assert.are.equal(200, res[1].status)
        assert.are.equal(tostring(8 * MIB), res[1].headers["content-length"])
        assert.is_true(res[1].body == pattern_body(8 * MIB), "body differs from what the handler sent")
        helper.assert_serves(server.port, "/")
      end)
    end)
  end
end)

describe("--idle-timeout bounds a response the client does not take", function()
  for _, case in ipairs { { "a string body", "/big16m" }, { "a streamed body", "/stream16m" } } do
    it("resets a keep-alive connection whose client stops reading a 16 MiB response (" .. case[1] .. ")", function()
      with_app({ "--idle-timeout", "1" }, function(server)
        local c = helper.connect(server.port, { rcvbuf = 16 * 1024 })
        local t0 = helper.now()
        c:send("GET " .. case[2] .. " HTTP/1.1\r\nHost: x\r\n\r\n")
        helper.sleep(2 * helper.slow)  -- never read meanwhile
        local text, ended, err = c:read_until_close(3 * helper.slow)
        local elapsed = helper.now() - t0
        c:close()
        assert.are.equal("closed", ended, string.format(
          "connection still open %.1fs after the client stopped reading (%d bytes received)", elapsed, #text))
        assert.is_true(#text < 16 * MIB, string.format(
          "the whole response arrived (%d bytes): the connection was not cut (%s)", #text, tostring(err)))
        helper.assert_serves(server.port, "/")
      end)
    end)
  end

  -- A steady reader is not an idle one, even when the whole response takes
  -- longer than --idle-timeout to get through.
  for _, case in ipairs { { "keep-alive", "" }, { "Connection: close", "Connection: close\r\n" } } do
    it("does not cut a client that keeps reading a 16 MiB response for longer than the timeout (" .. case[1] .. ")", function()
      with_app({ "--idle-timeout", "1" }, function(server)
        local c = helper.connect(server.port, { rcvbuf = 16 * 1024, timeout = 5 * helper.slow })
        c:send("GET /big16m HTTP/1.1\r\nHost: x\r\n" .. case[2] .. "\r\n")
        -- 512 KiB every 0.1 s: about 3.2 s in all, but the output never
        -- stands still for more than a moment
        local sock, parts, got, want = c.sock, {}, 0, nil
        local t0 = helper.now()
        local ended
        sock:settimeout(3 * helper.slow)
        while not want or got < want do
          local data, err, partial = sock:receive(want and math.min(512 * 1024, want - got) or 512 * 1024)
          local piece = data or partial
          if piece and #piece > 0 then parts[#parts + 1] = piece; got = got + #piece end
          if not data then
            ended = string.format("the connection ended (%s) after %d bytes, %.2fs into a steady read",
              tostring(err), got, helper.now() - t0)
            break
          end
          if not want then
            local head = table.concat(parts):match("^(.-\r\n\r\n)")
            if head then want = #head + 16 * MIB end
          end
          helper.sleep(0.1)
        end
        c:close()
        assert.is_nil(ended, ended)
        local res = helper.parse_response(table.concat(parts))
        assert.are.equal(200, res.status)
        assert.is_true(res.body == pattern_body(16 * MIB), "the slow reader got an altered body")
      end)
    end)
  end

  it("resets a streamed response whose handler waits for a request body that stopped coming", function()
    with_app({ "--idle-timeout", "1" }, function(server)
      local c = helper.connect(server.port)
      local t0 = helper.now()
      -- 10 of the 100 announced bytes, then nothing
      c:send("POST /streamecho HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
      local text, ended = c:read_until_close(4 * helper.slow)
      local elapsed = helper.now() - t0
      c:close()
      assert.are.equal("closed", ended, string.format(
        "connection still open after %.1fs; got %q", elapsed, text))
      assert.is_true(elapsed >= 0.8, string.format("cut after %.3fs, before the idle timeout", elapsed))
      assert.is_truthy(text:find("HTTP/1.1 200", 1, true), "no response head: " .. text)
      assert.is_truthy(text:find("0123456789", 1, true), "the echoed bytes did not arrive: " .. text)
      local _, perr = helper.parse(text)
      assert.is_truthy(perr, "the response looks complete, expected a cut chunked body: " .. text)
      helper.assert_serves(server.port, "/")
    end)
  end)
end)

describe("pipelined requests followed by the client's EOF", function()
  it("are all answered, in order", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      c:send("GET /slow?s=0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "GET /say?two HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "GET /say?three HTTP/1.1\r\nHost: x\r\n\r\n")
      c:shutdown("send")
      local text, ended = c:read_until_close(4 * helper.slow)
      c:close()
      assert.are.equal("closed", ended, "connection not closed after the last response; got: " .. text)
      local list, err = helper.parse(text)
      assert.is_nil(err, tostring(err) .. "; raw: " .. text)
      local bodies = {}
      for i, res in ipairs(list) do
        assert.are.equal(200, res.status)
        bodies[i] = res.body
      end
      assert.are.same({ "slept 0.2\n", "two\n", "three\n" }, bodies)
      helper.assert_serves(server.port, "/")
    end)
  end)
end)

describe("a to-be-closed variable in a handler that errors", function()
  it("is closed: its __close handler runs", function()
    with_app(nil, function(server)
      assert.are.equal(0, state_of(server).tbc_closed)
      expect_500(server, "/tbcerror")
      assert.are.equal(1, state_of(server).tbc_closed)
      expect_500(server, "/tbcerror")
      assert.are.equal(2, state_of(server).tbc_closed)
    end)
  end)
end)

describe("a request body over --max-body-size that keeps coming after a complete response", function()
  it("does not cut the response already given", function()
    with_app({ "--max-body-size", "1k" }, function(server)
      local c = helper.connect(server.port, { rcvbuf = 16 * 1024, timeout = 5 * helper.slow })
      -- the handler answers at the head, without reading the body
      c:send("POST /big1m HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. helper.chunked({ string.rep("a", 100) }):sub(1, -6))   -- without the last chunk
      helper.sleep(0.2)              -- the 1 MiB response is out or queued, unread
      local parts = {}
      for i = 1, 8 do parts[i] = string.rep("b", 1024) end
      c:send(helper.chunked(parts))  -- goes over the 1 KiB limit
      local text, ended, err = c:read_until_close(5 * helper.slow)
      c:close()
      assert.are.equal("closed", ended)
      local list, perr = helper.parse(text)
      assert.is_nil(perr, string.format("response cut short: %s (%d bytes received, socket: %s)",
        tostring(perr), #text, tostring(err)))
      assert.are.equal(1, #list, "expected only the handler's response")
      assert.are.equal(200, list[1].status)
      assert.are.equal(tostring(MIB), list[1].headers["content-length"])
      assert.is_true(list[1].body == pattern_body(MIB), "body differs from what the handler sent")
      helper.assert_serves(server.port, "/")
    end)
  end)
end)

describe("a handler returning an informational status", function()
  for _, st in ipairs { 100, 101, 199 } do
    it("gets a 500 for status " .. st .. " (a 1xx is not a final response)", function()
      with_app(nil, function(server)
        expect_500(server, "/status" .. st)
      end)
    end)
  end
end)
