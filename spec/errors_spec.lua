-- Handler errors and bad response tables (DESIGN.md section 4.5, contract
-- "Errors"): 500 with a short body (message + traceback only in --dev), the
-- error logged once, and the server keeps serving.
local helper = require "helper"

local APP = {
  ["index.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
  ["boom.lua"] = [[return function(req)
  error("kaboom-7f3a")
end]],
  ["boomtable.lua"] = [[return function(req)
  error({ code = 42 })
end]],
  ["status700.lua"] = [[return function(req) return { status = 700, body = "x" } end]],
  ["status99.lua"] = [[return function(req) return { status = 99, body = "x" } end]],
  ["injectvalue.lua"] = [[return function(req)
  return { status = 200, headers = { ["x-ok"] = "fine\r\nx-injected: yes" }, body = "x" }
end]],
  ["injectname.lua"] = [[return function(req)
  return { status = 200, headers = { ["x-bad\r\nx-injected"] = "yes" }, body = "x" }
end]],
  ["injectarray.lua"] = [[return function(req)
  return { status = 200, headers = { ["set-cookie"] = { "a=1", "b=2\nx-injected: yes" } }, body = "x" }
end]],
  ["nulvalue.lua"] = [[return function(req)
  return { status = 200, headers = { ["x-nul"] = "a\0b" }, body = "x" }
end]],
  ["numberbody.lua"] = [[return function(req) return { status = 200, body = 42 } end]],
  ["boolbody.lua"] = [[return function(req) return { status = 200, body = true } end]],
  ["noresponse.lua"] = [[return function(req) return nil end]],
  ["midstream.lua"] = [[return function(req)
  local n = 0
  return { status = 200, body = function()
    n = n + 1
    if n == 1 then return "first chunk\n" end
    error("midstream-9b2c")
  end }
end]],
}

local function with_app(args, fn)
  return helper.with_server({ files = APP, args = args }, fn)
end

-- GET path answers 500 with the short body, then a new client gets 200.
local function expect_500(server, path)
  local res = helper.get(server.port, path)
  assert.are.equal(500, res.status, "raw response: " .. res.raw)
  helper.assert_serves(server.port, "/")
  return res
end

describe("a handler that throws", function()
  it("answers 500 with a short body and logs the error once with a traceback", function()
    with_app({}, function(server)
      local res = expect_500(server, "/boom")
      assert.are.equal("Internal Server Error\n", res.body)
      assert.is_nil(res.body:find("kaboom", 1, true))
      local log = server:wait_stderr("stack traceback")
      assert.is_truthy(log, "no traceback in stderr:\n" .. server:stderr_text())
      helper.sleep(0.1)
      log = server:stderr_text()
      assert.are.equal(1, helper.count(log, "kaboom-7f3a"), "message not logged exactly once:\n" .. log)
      assert.matches("%[error%][^\n]*GET /boom[^\n]*kaboom%-7f3a", log)
      assert.matches("boom%.lua:2:", log)
    end)
  end)

  it("answers 500 for an error value that is not a string", function()
    with_app({}, function(server)
      expect_500(server, "/boomtable")
    end)
  end)

  it("puts the message and traceback in the 500 body in --dev mode", function()
    with_app({ "--dev" }, function(server)
      local res = expect_500(server, "/boom")
      assert.is_truthy(res.body:find("kaboom-7f3a", 1, true), "dev body lacks the message: " .. res.body)
      assert.is_truthy(res.body:find("stack traceback", 1, true), "dev body lacks the traceback: " .. res.body)
    end)
  end)

  it("answers HEAD with a 500 head and no body, keeping the connection in sync", function()
    with_app({}, function(server)
      local c = helper.connect(server.port)
      finally(function() c:close() end)
      c:send("HEAD /boom HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
      local r1 = c:response({ head = true })
      assert.are.equal(500, r1.status)
      assert.are.equal("22", r1.headers["content-length"])   -- what a GET would get
      local r2 = c:response()
      assert.are.equal(200, r2.status)
      assert.are.equal("ok\n", r2.body)
    end)
  end)

  it("keeps the connection usable after the 500", function()
    with_app({}, function(server)
      local c = helper.connect(server.port)
      finally(function() c:close() end)
      c:send("GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
      local r1 = c:try_response()
      assert.are.equal(500, r1 and r1.status)
      if (r1.headers.connection or ""):lower() ~= "close" then
        c:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert.are.equal(200, c:response().status)
      end
    end)
  end)

  it("aborts the connection when the error comes after the body started", function()
    with_app({}, function(server)
      local text, info = helper.raw(server.port, "GET /midstream HTTP/1.1\r\nHost: x\r\n\r\n",
        { timeout = 3 * helper.slow })
      assert.is_true(info.closed, "connection not aborted: " .. text)
      assert.matches("^HTTP/1%.1 200", text)
      assert.is_truthy(text:find("first chunk", 1, true))
      assert.is_nil(text:find("\r\n0\r\n\r\n$"), "the cut body was terminated as if complete: " .. text)
      local list, err = helper.parse(text)
      assert.is_truthy(err, "the client could parse a complete response from a cut body")
      assert.is_truthy(server:wait_stderr("midstream%-9b2c"), "error not logged")
      helper.assert_serves(server.port, "/")
    end)
  end)
end)

describe("a bad response table", function()
  it("answers 500 for status 700", function()
    with_app({}, function(server)
      expect_500(server, "/status700")
    end)
  end)

  it("answers 500 for status 99", function()
    with_app({}, function(server)
      expect_500(server, "/status99")
    end)
  end)

  it("answers 500 and never writes a header value containing CR LF", function()
    with_app({}, function(server)
      local res = expect_500(server, "/injectvalue")
      assert.is_nil(res.raw:lower():find("x-injected", 1, true), "injected header written: " .. res.raw)
      assert.is_nil(res.raw:find("fine", 1, true))
    end)
  end)

  it("answers 500 and never writes a header name containing CR LF", function()
    with_app({}, function(server)
      local res = expect_500(server, "/injectname")
      assert.is_nil(res.raw:lower():find("x-injected", 1, true), "injected header written: " .. res.raw)
    end)
  end)

  it("answers 500 for a LF inside one value of an array header", function()
    with_app({}, function(server)
      local res = expect_500(server, "/injectarray")
      assert.is_nil(res.raw:lower():find("x-injected", 1, true), "injected header written: " .. res.raw)
    end)
  end)

  it("answers 500 for a header value containing NUL", function()
    with_app({}, function(server)
      local res = expect_500(server, "/nulvalue")
      assert.is_nil(res.raw:find("\0", 1, true))
    end)
  end)

  it("answers 500 for a number body", function()
    with_app({}, function(server)
      expect_500(server, "/numberbody")
    end)
  end)

  it("answers 500 for a boolean body", function()
    with_app({}, function(server)
      expect_500(server, "/boolbody")
    end)
  end)

  it("answers 500 when the handler returns no response table", function()
    with_app({}, function(server)
      expect_500(server, "/noresponse")
    end)
  end)

  it("logs a bad response table with the route", function()
    with_app({}, function(server)
      expect_500(server, "/status700")
      local log = server:wait_stderr("%[error%]")
      assert.is_truthy(log, "bad response not logged:\n" .. server:stderr_text())
      assert.matches("%[error%][^\n]*/status700", log)
    end)
  end)
end)
