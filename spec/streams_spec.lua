-- Streamed bodies (DESIGN.md section 4.3): moonring.stream writers, channel
-- bodies and custom body kinds (__moonring_body), their framing on HTTP/1.1
-- and HTTP/1.0 and for HEAD, backpressure that bounds the server's memory
-- with a slow client, writes after the client left, errors in the middle of
-- a body, and the --write-buffer option.
local helper = require "helper"
local socket = require "socket"

local KIB, MIB = 1024, 1024 * 1024

local APP = {
  ["index.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
  -- state shared by every route of the app (a module is loaded once)
  ["_lib/state.lua"] = [[return { stream_calls = 0, flood_writes = 0 }]],
  ["state.lua"] = helper.STATE_ROUTE,
  -- three writes, a pause between them
  ["three.lua"] = [[
local moonring = require "moonring"
local state = require "_lib.state"
return function(req)
  return { status = 200, headers = { ["content-type"] = "text/plain" }, body = moonring.stream(function(out)
    state.stream_calls = state.stream_calls + 1
    for _, word in ipairs { "one\n", "two\n", "three\n" } do
      assert(out:write(word))
      moonring.sleep(0.05)
    end
  end) }
end
]],
  -- 100 MiB in 64 KiB writes, counted in state.flood_writes
  ["flood.lua"] = [[
local moonring = require "moonring"
local state = require "_lib.state"
local chunk = string.rep("f", 64 * 1024)
return function(req)
  return { status = 200, body = moonring.stream(function(out)
    for i = 1, 1600 do
      if not out:write(chunk) then return end
      state.flood_writes = i
    end
  end) }
end
]],
  -- writes until a write fails, then says why on stderr; its sleeps are
  -- protected, so it keeps going after the request was cancelled
  ["untilfail.lua"] = [[
local moonring = require "moonring"
return function(req)
  return { status = 200, body = moonring.stream(function(out)
    local n = 0
    while true do
      n = n + 1
      local ok, err = out:write("tick " .. n .. "\n")
      if not ok then
        io.stderr:write("untilfail: write returned ", tostring(ok), ", ", tostring(err), "\n")
        io.stderr:flush()
        return
      end
      pcall(moonring.sleep, 0.02)
    end
  end) }
end
]],
  -- writes 16 KiB pieces without pausing: parks on backpressure
  ["parkfail.lua"] = [[
local moonring = require "moonring"
local piece = string.rep("p", 16 * 1024)
return function(req)
  return { status = 200, body = moonring.stream(function(out)
    while true do
      local ok, err = out:write(piece)
      if not ok then
        io.stderr:write("parkfail: write returned ", tostring(ok), ", ", tostring(err), "\n")
        io.stderr:flush()
        return
      end
    end
  end) }
end
]],
  -- a channel filled by a spawned task, then closed
  ["chan.lua"] = [[
local moonring = require "moonring"
return function(req)
  local ch = moonring.channel()
  moonring.spawn(function()
    for _, v in ipairs { "alpha", "beta", "gamma" } do
      ch:put(v)
      moonring.sleep(0.03)
    end
    ch:close()
  end)
  return { status = 200, body = ch }
end
]],
  -- a custom body kind
  ["custom.lua"] = [[
local Parts = {}
Parts.__index = Parts
Parts.__moonring_body = function(self, out, res)
  for _, p in ipairs(self.parts) do assert(out:write(p)) end
  assert(out:write("status=" .. res.status .. ";tag=" .. res.headers["x-tag"] .. "\n"))
end
return function(req)
  local body = setmetatable({ parts = { "custom-a\n", "custom-b\n" } }, Parts)
  return { status = 201, headers = { ["x-tag"] = "t-4a7c" }, body = body }
end
]],
  -- errors after the body started, in the stream function itself
  ["midfail.lua"] = [[
local moonring = require "moonring"
return function(req)
  return { status = 200, body = moonring.stream(function(out)
    assert(out:write("before the error\n"))
    moonring.sleep(0.05)
    error("stream-midfail-71e3")
  end) }
end
]],
  -- a spawned task writes, then errors; the stream function joins it and
  -- passes the failure on
  ["taskfail.lua"] = [[
local moonring = require "moonring"
return function(req)
  return { status = 200, body = moonring.stream(function(out)
    local t = moonring.spawn(function()
      assert(out:write("from the task\n"))
      moonring.sleep(0.05)
      error("stream-taskfail-2d94", 0)
    end)
    local r = table.pack(t:join())
    io.stderr:write("taskfail: join returned ", tostring(r[1]), ", ", tostring(r[2]), "\n")
    io.stderr:flush()
    if not r[1] then error(r[2], 0) end
  end) }
end
]],
}

local function with_app(args, fn)
  return helper.with_server({ files = APP, args = args or {} }, fn)
end

local state_of = helper.state

-- VmRSS of a process in KiB.
local function rss_kib(pid)
  local text = helper.read_file("/proc/" .. pid .. "/status") or ""
  local kb = text:match("VmRSS:%s*(%d+)%s*kB")
  return (assert(tonumber(kb), "no VmRSS in /proc/" .. pid .. "/status"))
end

describe("a moonring.stream body", function()
  it("arrives in order, chunked, on HTTP/1.1", function()
    with_app(nil, function(server)
      local text, info = helper.raw(server.port, "GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.is_true(info.closed)
      local list, err = helper.parse(text)
      assert.is_nil(err, tostring(err) .. "; raw: " .. text)
      assert.are.equal(1, #list)
      local res = list[1]
      assert.are.equal(200, res.status)
      assert.is_true(res.chunked, "expected Transfer-Encoding: chunked; raw: " .. text)
      assert.is_nil(res.headers["content-length"])
      assert.are.equal("one\ntwo\nthree\n", res.body)
      assert.is_truthy(text:find("\r\n0\r\n\r\n$"), "no terminating chunk: " .. text)
    end)
  end)

  it("keeps a keep-alive connection usable after the chunked body", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      c:send("GET /three HTTP/1.1\r\nHost: x\r\n\r\n")
      local res = c:response()
      assert.are.equal("one\ntwo\nthree\n", res.body)
      c:send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.are.equal("ok\n", c:response().body)
      c:close()
    end)
  end)

  it("is close-delimited on HTTP/1.0", function()
    with_app(nil, function(server)
      local text, info = helper.raw(server.port, "GET /three HTTP/1.0\r\n\r\n")
      assert.is_true(info.closed, "connection not closed after a close-delimited body")
      local res = helper.parse_response(text)
      assert.are.equal(200, res.status)
      assert.is_nil(res.headers["transfer-encoding"], "chunked sent to an HTTP/1.0 client: " .. text)
      assert.is_nil(res.headers["content-length"])
      assert.is_true(res.close_delimited)
      assert.are.equal("one\ntwo\nthree\n", res.body)
    end)
  end)

  it("sends no body for HEAD and does not call the stream function", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      c:send("HEAD /three HTTP/1.1\r\nHost: x\r\n\r\n")
      local head = c:response({ head = true })
      assert.are.equal(200, head.status)
      -- the next response on the connection comes right after the head:
      -- no body bytes in between
      c:send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local nxt = c:response()
      assert.are.equal(200, nxt.status)
      assert.are.equal("ok\n", nxt.body)
      local rest = c:read_until_close(2 * helper.slow)
      assert.are.equal("", rest)
      c:close()
      helper.sleep(0.2)
      assert.are.equal(0, state_of(server).stream_calls, "the stream function ran for HEAD")
      -- while a GET does call it
      assert.are.equal("one\ntwo\nthree\n", helper.get(server.port, "/three").body)
      assert.are.equal(1, state_of(server).stream_calls)
    end)
  end)
end)

describe("backpressure on a moonring.stream body", function()
  it("parks the writer and bounds the server's memory while a client reads slowly", function()
    with_app(nil, function(server)
      -- warm up, then take the baseline
      assert.are.equal("one\ntwo\nthree\n", helper.get(server.port, "/three").body)
      collectgarbage()
      local before = rss_kib(server.pid)
      local c = helper.connect(server.port, { rcvbuf = 16 * KIB })
      c:send("GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
      local sock = c.sock
      sock:settimeout(2 * helper.slow)
      local got, peak = 0, before
      local t0 = helper.now()
      while helper.now() - t0 < 2 do
        local data, err, partial = sock:receive(1024)
        local piece = data or partial
        if piece then got = got + #piece end
        if not data then error("the stream ended while being read: " .. tostring(err)) end
        peak = math.max(peak, rss_kib(server.pid))
        socket.sleep(0.01)
      end
      local during = rss_kib(server.pid)
      peak = math.max(peak, during)
      local writes = state_of(server).flood_writes
      c:close()
      assert.is_true(got > 0, "nothing arrived")
      local growth = peak - before
      assert.is_true(growth < 16 * 1024, string.format(
        "server RSS grew by %.1f MiB (from %d KiB to %d KiB) while streaming to a slow client",
        growth / 1024, before, peak))
      assert.is_true(writes >= 1, "the writer never wrote")
      assert.is_true(writes < 400, string.format(
        "the writer did %d of its 1600 64 KiB writes in 2 s to a client that read %d bytes: it was not parked",
        writes, got))
      helper.assert_serves(server.port, "/")
    end)
  end)
end)

describe("out:write after the client left", function()
  it("returns nil, \"closed\" to a writer that keeps writing", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      c:send("GET /untilfail HTTP/1.1\r\nHost: x\r\n\r\n")
      c.sock:settimeout(2 * helper.slow)
      local line = c.sock:receive("*l")
      assert.are.equal("HTTP/1.1 200 OK", line)
      helper.sleep(0.1)
      c:reset()
      local text = server:wait_stderr("untilfail: write returned", 3 * helper.slow)
      assert.is_truthy(text, "the writer never saw a failed write:\n" .. server:stderr_text())
      assert.matches("untilfail: write returned nil, closed\n", text, 1, true)
      helper.assert_serves(server.port, "/")
    end)
  end)

  it("ends a writer parked on backpressure with nil and a reason", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port, { rcvbuf = 16 * KIB })
      c:send("GET /parkfail HTTP/1.1\r\nHost: x\r\n\r\n")
      c.sock:settimeout(2 * helper.slow)
      assert.is_truthy(c.sock:receive(4096))
      helper.sleep(0.3)                 -- never read: the writer parks
      c:reset()
      local text = server:wait_stderr("parkfail: write returned", 3 * helper.slow)
      assert.is_truthy(text, "the parked writer never returned:\n" .. server:stderr_text())
      local reason = text:match("parkfail: write returned nil, (%a+)\n")
      assert.is_truthy(reason == "closed" or reason == "cancelled",
        "unexpected write result: " .. tostring(text:match("parkfail: write returned[^\n]*")))
      helper.assert_serves(server.port, "/")
    end)
  end)
end)

describe("a channel body", function()
  it("sends each value put by a spawned task as a chunk and ends cleanly when the channel closes", function()
    with_app(nil, function(server)
      local text, info = helper.raw(server.port, "GET /chan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.is_true(info.closed)
      local list, err = helper.parse(text)
      assert.is_nil(err, tostring(err) .. "; raw: " .. text)
      assert.are.equal(1, #list)
      assert.are.equal(200, list[1].status)
      assert.is_true(list[1].chunked)
      assert.are.same({ "alpha", "beta", "gamma" }, list[1].chunks)
      assert.is_truthy(text:find("\r\n0\r\n\r\n$"), "no terminating chunk: " .. text)
    end)
  end)

  it("leaves a keep-alive connection usable", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      c:send("GET /chan HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.are.equal("alphabetagamma", c:response().body)
      c:send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.are.equal("ok\n", c:response().body)
      c:close()
    end)
  end)
end)

describe("a custom body kind", function()
  it("is written by its __moonring_body(self, out, response) metamethod", function()
    with_app(nil, function(server)
      local res = helper.get(server.port, "/custom")
      assert.are.equal(201, res.status)
      assert.are.equal("t-4a7c", res.headers["x-tag"])
      assert.are.equal("custom-a\ncustom-b\nstatus=201;tag=t-4a7c\n", res.body)
    end)
  end)
end)

describe("an error in the middle of a streamed body", function()
  local function expect_cut(server, path, marker, message)
    local text, info = helper.raw(server.port, "GET " .. path .. " HTTP/1.1\r\nHost: x\r\n\r\n",
      { timeout = 3 * helper.slow })
    assert.is_true(info.closed, "connection not aborted: " .. text)
    assert.matches("^HTTP/1%.1 200", text)
    assert.is_truthy(text:find(marker, 1, true), "the part written before the error is missing: " .. text)
    assert.is_nil(text:find("\r\n0\r\n\r\n", 1, true), "the cut body was terminated as if complete: " .. text)
    local _, err = helper.parse(text)
    assert.is_truthy(err, "the client could parse a complete response from a cut body: " .. text)
    assert.is_truthy(server:wait_stderr("%[error%][^\n]*" .. message),
      "the error was not logged:\n" .. server:stderr_text())
    helper.assert_serves(server.port, "/")
  end

  it("aborts the connection when the stream function errors after writing", function()
    with_app(nil, function(server)
      expect_cut(server, "/midfail", "before the error", "stream%-midfail%-71e3")
    end)
  end)

  it("aborts the connection when a spawned task writes and then fails while the stream function joins it", function()
    with_app(nil, function(server)
      expect_cut(server, "/taskfail", "from the task", "stream%-taskfail%-2d94")
    end)
  end)
end)

describe("--write-buffer", function()
  it("is accepted with a k suffix, and streams still work", function()
    with_app({ "--write-buffer", "8k" }, function(server)
      assert.are.equal("one\ntwo\nthree\n", helper.get(server.port, "/three").body)
      -- a larger body through the small buffer: complete and intact
      local c = helper.connect(server.port, { rcvbuf = 16 * KIB })
      c:send("GET /chan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.are.equal("alphabetagamma", c:response().body)
      c:close()
    end)
  end)

  it("refuses a bad value at startup with exit status 2", function()
    local app = helper.app(APP)
    for _, bad in ipairs { "lots", "-5", "" } do
      local r = helper.run { "--port", "0", "--write-buffer", bad, app }
      assert.are.equal(2, r.status, "--write-buffer " .. string.format("%q", bad) .. " accepted; stderr: " .. r.stderr)
      assert.are.equal("", r.stdout)
    end
    helper.remove(app)
  end)
end)
