-- The response table (DESIGN.md section 4.3): status, headers (single and
-- repeated), and the body kinds nil, "", string, array of strings, iterator.
local helper = require "helper"

local APP = {
  ["string.lua"] = [[return function(req)
  return { status = 200, headers = { ["content-type"] = "text/plain; charset=utf-8" }, body = "hello, world\n" }
end]],
  ["array.lua"] = [[return function(req)
  return { status = 200, body = { "a", "bc", "", "def" } }
end]],
  ["iter.lua"] = [[return function(req)
  local parts = { "one ", "two ", "three" }
  local i = 0
  return { status = 200, body = function()
    i = i + 1
    return parts[i]
  end }
end]],
  ["slowiter.lua"] = [[
local moonring = require "moonring"
return function(req)
  local n = 0
  return { status = 200, body = function()
    n = n + 1
    if n > 3 then return nil end
    moonring.sleep(0.05)
    return "tick" .. n .. "\n"
  end }
end]],
  ["nilbody.lua"] = [[return function(req) return { status = 200 } end]],
  ["emptybody.lua"] = [[return function(req) return { status = 200, body = "" } end]],
  ["nocontent.lua"] = [[return function(req) return { status = 204 } end]],
  ["cookies.lua"] = [[return function(req)
  return { status = 200, headers = { ["set-cookie"] = { "a=1; Path=/", "b=2; HttpOnly" }, ["x-single"] = "one" },
           body = "cookies\n" }
end]],
  ["status.lua"] = [[return function(req)
  local code = tonumber(req.query_string) or 200
  local headers = {}
  if code >= 300 and code < 400 then headers.location = "/elsewhere" end
  return { status = code, headers = headers, body = "status " .. code .. "\n" }
end]],
  ["lying.lua"] = [[return function(req)
  return { status = 200, headers = { ["content-length"] = "999", ["transfer-encoding"] = "gzip" }, body = "abc" }
end]],
  ["bigiter.lua"] = [[return function(req)
  local i = 0
  return { status = 200, body = function()
    i = i + 1
    if i > 256 then return nil end
    return string.format("%08d", i) .. string.rep("x", 16376)
  end }
end]],
  ["big.lua"] = [[return function(req)
  local parts = {}
  for i = 1, 64 do parts[i] = string.rep(string.char(64 + i % 26), 4096) end
  return { status = 200, body = parts }
end]],
}

local function with_app(fn)
  return helper.with_server({ files = APP }, fn)
end

describe("response", function()
  it("sends a string body with its Content-Length", function()
    with_app(function(server)
      local res = helper.get(server.port, "/string")
      assert.are.equal(200, res.status)
      assert.are.equal("hello, world\n", res.body)
      assert.are.equal("13", res.headers["content-length"])
      assert.is_nil(res.headers["transfer-encoding"])
      assert.are.equal("text/plain; charset=utf-8", res.headers["content-type"])
    end)
  end)

  it("sends an array of strings in order with the total Content-Length", function()
    with_app(function(server)
      local res = helper.get(server.port, "/array")
      assert.are.equal(200, res.status)
      assert.are.equal("abcdef", res.body)
      assert.are.equal("6", res.headers["content-length"])
    end)
  end)

  it("sends a large array body intact", function()
    with_app(function(server)
      local res = helper.get(server.port, "/big")
      local parts = {}
      for i = 1, 64 do parts[i] = string.rep(string.char(64 + i % 26), 4096) end
      assert.are.equal(200, res.status)
      assert.are.equal(table.concat(parts), res.body)
    end)
  end)

  it("sends a 4 MiB iterator body intact to a client that reads slowly", function()
    with_app(function(server)
      local c = helper.connect(server.port)
      c:send("GET /bigiter HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      helper.sleep(0.3) -- let the server fill the socket buffers first
      local res = c:response({ timeout = 10 * helper.slow })
      assert.are.equal(200, res.status)
      assert.are.equal(256 * 16384, #res.body)
      for i = 1, 256, 51 do
        local at = (i - 1) * 16384 + 1
        assert.are.equal(string.format("%08d", i), res.body:sub(at, at + 7))
      end
      c:close()
    end)
  end)

  it("sends an iterator body chunked on HTTP/1.1, one chunk per value", function()
    with_app(function(server)
      local res = helper.get(server.port, "/iter")
      assert.are.equal(200, res.status)
      assert.are.equal("chunked", (res.headers["transfer-encoding"] or ""):lower())
      assert.is_nil(res.headers["content-length"])
      assert.are.equal("one two three", res.body)
      assert.are.same({ "one ", "two ", "three" }, res.chunks)
    end)
  end)

  it("lets an iterator body wait between chunks", function()
    with_app(function(server)
      local res = helper.get(server.port, "/slowiter")
      assert.are.equal(200, res.status)
      assert.are.equal("tick1\ntick2\ntick3\n", res.body)
    end)
  end)

  it("keeps the connection usable after a chunked response", function()
    with_app(function(server)
      local c = helper.connect(server.port)
      finally(function() c:close() end)
      c:send("GET /iter HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.are.equal("one two three", c:response().body)
      c:send("GET /string HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.are.equal("hello, world\n", c:response().body)
    end)
  end)

  it("sends an empty body with Content-Length: 0 for a nil body", function()
    with_app(function(server)
      local res = helper.get(server.port, "/nilbody")
      assert.are.equal(200, res.status)
      assert.are.equal("", res.body)
      assert.are.equal("0", res.headers["content-length"])
    end)
  end)

  it("sends an empty body with Content-Length: 0 for an empty string body", function()
    with_app(function(server)
      local res = helper.get(server.port, "/emptybody")
      assert.are.equal(200, res.status)
      assert.are.equal("", res.body)
      assert.are.equal("0", res.headers["content-length"])
    end)
  end)

  it("sends no body bytes for a 204", function()
    with_app(function(server)
      local text, info = helper.raw(server.port, "GET /nocontent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.is_true(info.closed)
      assert.matches("^HTTP/1%.1 204", text)
      assert.are.equal(#text, text:find("\r\n\r\n", 1, true) + 3)
    end)
  end)

  it("writes one header line per value of an array header", function()
    with_app(function(server)
      local res = helper.get(server.port, "/cookies")
      assert.are.equal(200, res.status)
      assert.are.same({ "a=1; Path=/", "b=2; HttpOnly" }, helper.header_values(res, "set-cookie"))
      assert.are.same({ "one" }, helper.header_values(res, "x-single"))
    end)
  end)

  it("propagates the status the handler returns", function()
    with_app(function(server)
      for _, code in ipairs { 201, 202, 302, 404, 418, 503, 599 } do
        local res = helper.get(server.port, "/status?" .. code)
        assert.are.equal(code, res.status)
        assert.are.equal("status " .. code .. "\n", res.body)
      end
      assert.are.equal("/elsewhere", helper.get(server.port, "/status?302").headers.location)
    end)
  end)

  it("ignores content-length and transfer-encoding set by the handler", function()
    with_app(function(server)
      local text, info = helper.raw(server.port, "GET /lying HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.is_true(info.closed)
      local res = helper.parse_response(text)
      assert.are.equal(200, res.status)
      assert.are.same({ "3" }, helper.header_values(res, "content-length"))
      assert.is_nil(res.headers["transfer-encoding"])
      assert.are.equal("abc", res.body)
    end)
  end)
end)
