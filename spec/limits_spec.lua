-- Bad input and limits (DESIGN.md section 5): each bad request gets its
-- status, the server then closes that connection, and the next client is
-- served normally. Also the idle and request timeouts and max connections.
local helper = require "helper"

local APP = {
  ["index.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
  -- reads the whole body and reports its length
  ["upload.lua"] = [[
return function(req)
  local data = req.body and req.body:read("a") or ""
  return { status = 200, body = "got " .. #data .. "\n" }
end
]],
  ["sleep.lua"] = [[
local moonring = require "moonring"
return function(req)
  moonring.sleep(tonumber((req.query_string or ""):match("s=([%d.]+)")) or 0.5)
  return { status = 200, body = "slept\n" }
end
]],
}

local DEFAULT_ARGS = { "--max-body-size", "1k", "--header-timeout", "0.5" }

local function with_app(args, fn)
  return helper.with_server({ files = APP, args = args or DEFAULT_ARGS }, fn)
end

-- Sends `bytes` on a fresh connection; asserts the status, that the server
-- closed the connection, and that a new client is then served 200.
local function expect_rejected(server, bytes, status, opts)
  opts = opts or {}
  local text, info = helper.raw(server.port, bytes, { timeout = opts.timeout or 3 * helper.slow, pause = opts.pause })
  assert.is_true(info.closed, string.format(
    "server did not close the connection after a bad request (expected %d); got %q", status, text))
  local res = helper.parse_response(text)
  assert.are.equal(status, res.status, "raw response: " .. text)
  local list = helper.parse(text)
  assert.are.equal(1, #list, "expected exactly one response, got: " .. text)
  helper.assert_serves(server.port, "/")
  return res, info
end

describe("bad requests", function()
  it("answers 400 and closes for a request line with an unknown method", function()
    with_app(nil, function(server)
      expect_rejected(server, "BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 400)
    end)
  end)

  it("answers 400 and closes for junk after the HTTP version", function()
    with_app(nil, function(server)
      expect_rejected(server, "GET / HTTP/1.1 junk\r\nHost: x\r\n\r\n", 400)
    end)
  end)

  it("answers 400 and closes for a header line without a colon", function()
    with_app(nil, function(server)
      expect_rejected(server, "GET / HTTP/1.1\r\nHost x\r\n\r\n", 400)
    end)
  end)

  it("answers 505 and closes for an HTTP version other than 1.x", function()
    with_app(nil, function(server)
      expect_rejected(server, "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505)
    end)
  end)

  it("answers 400 and closes for an HTTP/1.1 request without a Host header", function()
    with_app(nil, function(server)
      expect_rejected(server, "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400)
    end)
  end)

  it("answers 400 and closes for two Host headers", function()
    with_app(nil, function(server)
      expect_rejected(server, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400)
    end)
  end)

  it("answers 400 and closes for a space between a header name and its colon", function()
    with_app(nil, function(server)
      expect_rejected(server, "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400)
    end)
  end)

  it("answers 400 and closes for a NUL byte in a header value", function()
    with_app(nil, function(server)
      expect_rejected(server, "GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\0b\r\n\r\n", 400)
    end)
  end)

  it("answers 400 and closes for a request that is not HTTP at all", function()
    with_app(nil, function(server)
      expect_rejected(server, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400)
    end)
  end)

  it("answers 400 and closes when both Content-Length and Transfer-Encoding are sent", function()
    with_app(nil, function(server)
      expect_rejected(server, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        .. "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400)
    end)
  end)

  it("answers 400 and closes for conflicting Content-Length values", function()
    with_app(nil, function(server)
      expect_rejected(server, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        .. "Content-Length: 6\r\n\r\nhello!", 400)
    end)
  end)

  it("answers 400 and closes for a list of Content-Length values in one header", function()
    with_app(nil, function(server)
      expect_rejected(server, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!", 400)
    end)
  end)

  it("answers 400 and closes when the final transfer coding is not chunked", function()
    with_app(nil, function(server)
      expect_rejected(server, "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400)
    end)
  end)

  it("answers 501 and closes for an unknown transfer coding before chunked", function()
    with_app(nil, function(server)
      expect_rejected(server, "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        .. "5\r\nhello\r\n0\r\n\r\n", 501)
    end)
  end)

  it("answers 400 and closes for a malformed chunk size", function()
    with_app(nil, function(server)
      expect_rejected(server, "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "zz\r\nhello\r\n0\r\n\r\n", 400)
    end)
  end)
end)

describe("header size limit", function()
  it("answers 431 and closes when the head is over 16 KiB by default", function()
    with_app({}, function(server)
      local big = string.rep("a", 17 * 1024)
      expect_rejected(server, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " .. big .. "\r\n\r\n", 431)
    end)
  end)

  it("answers 431 when many small headers add up to more than the limit", function()
    with_app({}, function(server)
      local lines = {}
      for i = 1, 400 do lines[#lines + 1] = string.format("X-H%d: %s\r\n", i, string.rep("v", 40)) end
      expect_rejected(server, "GET / HTTP/1.1\r\nHost: x\r\n" .. table.concat(lines) .. "\r\n", 431)
    end)
  end)

  it("accepts a head just under the limit", function()
    with_app({}, function(server)
      local res = helper.get(server.port, "/", { headers = { ["X-Big"] = string.rep("a", 15 * 1024) } })
      assert.are.equal(200, res.status)
    end)
  end)

  it("answers 414 and closes for a request target over the limit", function()
    with_app({}, function(server)
      expect_rejected(server, "GET /" .. string.rep("u", 20 * 1024) .. " HTTP/1.1\r\nHost: x\r\n\r\n", 414)
    end)
  end)

  it("answers 431 and closes for more than 100 header fields", function()
    with_app({}, function(server)
      local fields = {}
      for i = 1, 101 do fields[i] = "X-F" .. i .. ": v\r\n" end
      expect_rejected(server, "GET / HTTP/1.1\r\nHost: x\r\n" .. table.concat(fields, "", 1, 100) .. "\r\n", 431)
    end)
  end)

  it("honours --max-header-size", function()
    with_app({ "--max-header-size", "2048" }, function(server)
      expect_rejected(server, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " .. string.rep("a", 3000) .. "\r\n\r\n", 431)
    end)
  end)
end)

describe("body size limit", function()
  it("answers 413 and closes for a Content-Length body over --max-body-size", function()
    with_app(nil, function(server)
      expect_rejected(server, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n"
        .. string.rep("b", 2048), 413)
    end)
  end)

  it("answers 413 and closes for a chunked body that grows over --max-body-size", function()
    with_app(nil, function(server)
      local parts = {}
      for i = 1, 8 do parts[i] = string.rep(tostring(i), 256) end
      expect_rejected(server, "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. helper.chunked(parts), 413)
    end)
  end)

  it("answers 413 instead of 100 Continue when the announced body is over the limit", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      c:send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\nExpect: 100-continue\r\n\r\n")
      local res = c:response()
      assert.are.equal(413, res.status)
      assert.is_true(c:wait_closed())
      helper.assert_serves(server.port, "/")
    end)
  end)

  it("accepts a body exactly at the limit", function()
    with_app(nil, function(server)
      local res = helper.request(server.port, "POST", "/upload", { body = string.rep("b", 1024) })
      assert.are.equal(200, res.status)
      assert.are.equal("got 1024\n", res.body)
    end)
  end)

  it("accepts a chunked body just under the limit", function()
    with_app(nil, function(server)
      local res = helper.request(server.port, "POST", "/upload", {
        headers = { ["Transfer-Encoding"] = "chunked" },
        body = helper.chunked { string.rep("x", 500), string.rep("y", 500) },
      })
      assert.are.equal(200, res.status)
      assert.are.equal("got 1000\n", res.body)
    end)
  end)

  it("uses a 1 MiB limit by default", function()
    with_app({}, function(server)
      local ok = helper.request(server.port, "POST", "/upload", { body = string.rep("b", 1024 * 1024) })
      assert.are.equal(200, ok.status)
      assert.are.equal("got 1048576\n", ok.body)
      expect_rejected(server, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n"
        .. string.rep("b", 1048577), 413)
    end)
  end)
end)

describe("header timeout", function()
  it("answers 408 and closes when the head is not complete in time", function()
    with_app(nil, function(server)
      local _, info = expect_rejected(server, "GET / HTTP/1.1\r\nHost: x\r\nX-Partial: yes\r\n", 408)
      assert.is_true(info.elapsed >= 0.4, "408 came before the header timeout: " .. info.elapsed)
      assert.is_true(info.elapsed < 2.5 * helper.slow, "408 came late: " .. info.elapsed)
    end)
  end)

  it("answers 408 to a client that sends only part of the request line", function()
    with_app(nil, function(server)
      expect_rejected(server, "GET /ind", 408)
    end)
  end)

  it("does not time out a head that trickles in but completes within the timeout", function()
    with_app({ "--header-timeout", "2" }, function(server)
      local text, info = helper.raw(server.port, {
        "GET / HTTP/1.1\r\n", "Host: x\r\n", "Connection: close\r\n", "\r\n",
      }, { pause = 0.1 })
      assert.is_true(info.closed)
      assert.are.equal(200, helper.parse_response(text).status)
    end)
  end)
end)

describe("idle timeout", function()
  it("silently closes a keep-alive connection left idle after a response", function()
    with_app({ "--idle-timeout", "0.5" }, function(server)
      local c = helper.connect(server.port)
      finally(function() c:close() end)
      c:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.are.equal(200, c:response().status)
      local t0 = helper.now()
      local closed, got = c:wait_closed(3 * helper.slow)
      assert.is_true(closed, "idle connection not closed silently: " .. tostring(got))
      assert.is_true(helper.now() - t0 >= 0.3, "closed before the idle timeout")
      helper.assert_serves(server.port, "/")
    end)
  end)
end)

describe("idle timeout after a handler that waited", function()
  it("closes the keep-alive connection once idle, like after any other handler", function()
    with_app({ "--idle-timeout", "0.5" }, function(server)
      local c = helper.connect(server.port)
      c:send("GET /sleep?s=0.01 HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.are.equal(200, c:response().status)
      local closed, got = c:wait_closed(3 * helper.slow)
      assert.is_true(closed, "idle connection not closed silently: " .. tostring(got))
    end)
  end)
end)

describe("request timeout", function()
  it("answers 504 when the handler has not started a response in time", function()
    with_app({ "--request-timeout", "0.5" }, function(server)
      local t0 = helper.now()
      local res = helper.get(server.port, "/sleep?s=3", { timeout = 4 * helper.slow })
      assert.are.equal(504, res.status)
      assert.is_true(helper.now() - t0 < 2 * helper.slow, "504 came late")
      helper.assert_serves(server.port, "/")
    end)
  end)
end)

describe("max connections", function()
  it("answers 503 and closes a connection over --max-connections", function()
    with_app({ "--max-connections", "2" }, function(server)
      local conns = {}
      finally(function() for _, c in ipairs(conns) do c:close() end end)
      for i = 1, 2 do
        local c = helper.connect(server.port)
        conns[i] = c
        c:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert.are.equal(200, c:response().status)
      end
      local text, info = helper.raw(server.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", { timeout = 3 * helper.slow })
      assert.is_true(info.closed)
      assert.are.equal(503, helper.parse_response(text).status)
      -- once a slot frees up, new clients are served again
      conns[1]:close()
      table.remove(conns, 1)
      helper.sleep(0.2)
      helper.assert_serves(server.port, "/")
    end)
  end)

  it("logs a burst of refusals as one line with a count, not a line each", function()
    with_app({ "--max-connections", "1" }, function(server)
      local held = helper.connect(server.port)
      finally(function() held:close() end)
      held:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.are.equal(200, held:response().status)
      local t0 = helper.now()
      for _ = 1, 30 do
        local _, info = helper.raw(server.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", { timeout = 3 * helper.slow })
        assert.is_true(info.closed)
      end
      local burst = helper.now() - t0
      -- one more after a quiet second carries the count of what was held back
      helper.sleep(1.1)
      helper.raw(server.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", { timeout = 3 * helper.slow })
      local lines, counted
      helper.eventually(function()
        lines, counted = 0, 0
        for line in server:stderr_text():gmatch("[^\n]*over %-%-max%-connections[^\n]*") do
          lines = lines + 1
          counted = counted + 1 + tonumber(line:match("and (%d+) more like it") or 0)
        end
        return counted == 31
      end)
      assert.are.equal(31, counted, server:stderr_text())     -- every refusal accounted for
      assert.is_true(lines <= math.ceil(burst) + 2,             -- at most one line a second
        lines .. " lines for a burst of " .. burst .. " s:\n" .. server:stderr_text())
    end)
  end)
end)

describe("a body the handler does not read", function()
  it("is discarded after the response, and a client that stops sending it is disconnected", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      -- index.lua answers without reading; 10 of the 100 announced bytes arrive
      c:send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
      local res = c:response()
      assert.are.equal(200, res.status)
      local t0 = helper.now()
      local closed, got = c:wait_closed(4 * helper.slow)
      c:close()
      assert.is_true(closed, "connection still open after --header-timeout: " .. tostring(got))
      assert.is_true(helper.now() - t0 >= 0.3, "closed before the header timeout ran out")
      helper.assert_serves(server.port, "/")
    end)
  end)

  it("is read and dropped so the next pipelined request is served", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      c:send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        .. "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.are.equal(200, c:response().status)
      assert.are.equal(200, c:response().status)
      assert.is_true((c:wait_closed()))
      c:close()
    end)
  end)
end)
