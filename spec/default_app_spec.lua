-- The default app in handlers/, served when no APP is given (run from the
-- repository root, as `make test` does).
local helper = require "helper"
local cjson = require "cjson"

local function with_default(fn)
  return helper.with_server({}, fn)
end

describe("default app (handlers/)", function()
  it("is served when no APP is given, with an index page listing the routes", function()
    with_default(function(server)
      local res = helper.get(server.port, "/")
      assert.are.equal(200, res.status)
      assert.matches("^text/html", res.headers["content-type"] or "")
      for _, path in ipairs { "/hello", "/echo", "/users/:id", "/slow", "/clock" } do
        assert.is_truthy(res.body:find(path, 1, true), "index does not list " .. path)
      end
    end)
  end)

  it("streams the time as Server-Sent Events on /clock", function()
    with_default(function(server)
      local c = helper.connect(server.port)
      c:send("GET /clock HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 41\r\n\r\n")
      local head = {}
      repeat
        local line = assert(c.sock:receive("*l"))
        head[#head + 1] = line
      until line == ""
      assert.matches("^HTTP/1.1 200", head[1])
      assert.is_truthy(table.concat(head, "\n"):lower():find("content-type: text/event-stream", 1, true))
      local seen = {}
      local deadline = helper.now() + 4 * helper.slow
      while #seen < 2 and helper.now() < deadline do
        local line = c.sock:receive("*l")
        if line and line:match("^id: ") then seen[#seen + 1] = tonumber(line:match("%d+")) end
      end
      c:close()
      assert.are.same({ 42, 43 }, seen)        -- resumed after Last-Event-ID
    end)
  end)

  it("answers /hello with a plain-text greeting", function()
    with_default(function(server)
      local res = helper.get(server.port, "/hello")
      assert.are.equal(200, res.status)
      assert.matches("^text/plain", res.headers["content-type"] or "")
      assert.matches("[Hh]ello", res.body)
    end)
  end)

  it("echoes the request table as JSON on /echo, body included", function()
    with_default(function(server)
      local res = helper.request(server.port, "POST", "/echo?a=1", {
        headers = { ["X-Test"] = "yes" }, body = "payload" })
      assert.are.equal(200, res.status)
      assert.matches("^application/json", res.headers["content-type"] or "")
      local req = cjson.decode(res.body)
      assert.are.equal("POST", req.request_method)
      assert.are.equal("/echo", req.uri)
      assert.are.equal("a=1", req.query_string)
      assert.are.equal("yes", req.headers["x-test"])
      assert.are.equal("payload", req.body)
      assert.are.equal("HTTP/1.1", req.protocol)
      assert.are.equal(server.port, req.server_port)
      assert.are.equal("/echo", req.route)
    end)
  end)

  it("answers /users/42 from the [id] route and 404 for an unknown user", function()
    with_default(function(server)
      local res = helper.get(server.port, "/users/42")
      assert.are.equal(200, res.status)
      assert.is_truthy(res.body:find("42", 1, true))
      assert.are.equal(404, helper.get(server.port, "/users/999").status)
    end)
  end)

  it("answers 405 with Allow for a method /users/:id does not serve", function()
    with_default(function(server)
      local res = helper.request(server.port, "PUT", "/users/42", { body = "x" })
      assert.are.equal(405, res.status)
      assert.matches("GET", res.headers.allow or "")
      assert.matches("DELETE", res.headers.allow or "")
    end)
  end)

  it("answers /slow after sleeping, honouring ?s=", function()
    with_default(function(server)
      local t0 = helper.now()
      local res = helper.get(server.port, "/slow?s=0.2")
      local elapsed = helper.now() - t0
      assert.are.equal(200, res.status)
      assert.is_true(elapsed >= 0.2, "answered after " .. elapsed .. " s")
      assert.is_true(elapsed < 1.5 * helper.slow, "answered after " .. elapsed .. " s")
    end)
  end)

  it("answers 404 for a path with no route", function()
    with_default(function(server)
      assert.are.equal(404, helper.get(server.port, "/no/such/route").status)
    end)
  end)
end)
