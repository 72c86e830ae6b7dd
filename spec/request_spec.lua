-- The request table handlers receive (DESIGN.md section 4.2). A single-file
-- app dumps what it saw as a Lua expression; the specs load and inspect it.
local helper = require "helper"

local APP = {
  ["app.lua"] = helper.DUMP .. [[
return function(req)
  local r = {
    request_method = req.request_method, uri = req.uri, query_string = req.query_string,
    scheme = req.scheme, protocol = req.protocol, remote_addr = req.remote_addr,
    server_name = req.server_name, server_port = req.server_port, params = req.params,
    id = req.id, id_type = math.type(req.id), port_type = math.type(req.server_port),
    headers = {}, has_body = req.body ~= nil, qs_is_nil = req.query_string == nil,
  }
  for k, v in pairs(req.headers) do r.headers[k] = v end
  if req.body then
    if (req.query_string or ""):find("chunks", 1, true) then
      r.chunks = {}
      while true do
        local c = req.body:read()
        if c == nil then break end
        r.chunks[#r.chunks + 1] = c
      end
      r.after_end = req.body:read() == nil
      r.body_text = table.concat(r.chunks)
    elseif (req.query_string or ""):find("mixed", 1, true) then
      local first = req.body:read()
      r.body_text = first .. req.body:read("a")
    else
      r.body_text = req.body:read("a")
    end
  end
  return { status = 200, headers = { ["content-type"] = "text/plain" }, body = dump(r) }
end
]],
}

local function with_app(fn)
  return helper.with_server({ files = APP, entry = "app.lua" }, fn)
end

-- Sends raw request bytes and returns the dumped request table.
local function seen_raw(server, bytes, opts)
  local text = helper.raw(server.port, bytes, opts)
  local res = helper.parse_response(text)
  assert.are.equal(200, res.status, "raw response: " .. text)
  return helper.undump(res.body)
end

local function seen(server, method, path, opts)
  local res = helper.request(server.port, method, path, opts)
  assert.are.equal(200, res.status, "raw response: " .. res.raw)
  return helper.undump(res.body)
end

describe("request table", function()
  it("carries the method, the percent-encoded path and the query string as sent", function()
    with_app(function(server)
      local r = seen(server, "DELETE", "/a/b%20c/%C3%A9?x=1&y=%2F")
      assert.are.equal("DELETE", r.request_method)
      assert.are.equal("/a/b%20c/%C3%A9", r.uri)
      assert.are.equal("x=1&y=%2F", r.query_string)
    end)
  end)

  it("has a nil query_string when the target has no '?'", function()
    with_app(function(server)
      local r = seen(server, "GET", "/plain")
      assert.are.equal("/plain", r.uri)
      assert.is_true(r.qs_is_nil)
    end)
  end)

  it("gives the path of an absolute-form target as uri", function()
    with_app(function(server)
      local r = seen_raw(server, "GET http://example.com/x?y=1 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
      assert.are.equal("/x", r.uri)
      assert.are.equal("y=1", r.query_string)
      local a = seen_raw(server, "GET http://target.test:81/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
      assert.are.equal("target.test", a.server_name)   -- RFC 9112 3.2.2: the target names the server
    end)
  end)

  it("gives '/' as uri for an absolute-form target without a path", function()
    with_app(function(server)
      local r = seen_raw(server, "GET http://example.com HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
      assert.are.equal("/", r.uri)
    end)
  end)

  it("lower-cases header names and keeps values as sent", function()
    with_app(function(server)
      local r = seen(server, "GET", "/", { headers = { { "X-Custom-Thing", "Mixed Case Value" } } })
      assert.are.equal("Mixed Case Value", r.headers["x-custom-thing"])
      assert.is_nil(r.headers["X-Custom-Thing"])
      assert.are.equal("127.0.0.1:" .. server.port, r.headers.host)
    end)
  end)

  it("joins repeated headers with ', '", function()
    with_app(function(server)
      local r = seen(server, "GET", "/", { headers = {
        { "X-Multi", "a" }, { "Accept", "text/html" }, { "x-multi", "b" }, { "X-MULTI", "c" } } })
      assert.are.equal("a, b, c", r.headers["x-multi"])
      assert.are.equal("text/html", r.headers.accept)
    end)
  end)

  it("joins repeated cookie headers with '; '", function()
    with_app(function(server)
      local r = seen(server, "GET", "/", { headers = { { "Cookie", "a=1" }, { "Cookie", "b=2; c=3" } } })
      assert.are.equal("a=1; b=2; c=3", r.headers.cookie)
    end)
  end)

  it("has a nil body for a request without one", function()
    with_app(function(server)
      local r = seen(server, "GET", "/")
      assert.is_false(r.has_body)
      assert.is_nil(r.body_text)
    end)
  end)

  it("reads a Content-Length body whole with read('a')", function()
    with_app(function(server)
      local r = seen(server, "POST", "/", { body = "name=moon&ring=1" })
      assert.is_true(r.has_body)
      assert.are.equal("name=moon&ring=1", r.body_text)
    end)
  end)

  it("reads a Content-Length body chunk by chunk with read() until nil", function()
    with_app(function(server)
      local body = string.rep("0123456789", 30)
      local head = "POST /?chunks HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
        .. #body .. "\r\n\r\n"
      local r = seen_raw(server, { head, body:sub(1, 100), body:sub(101, 200), body:sub(201) }, { pause = 0.05 })
      assert.are.equal(body, r.body_text)
      assert.is_true(#r.chunks >= 1)
      for _, c in ipairs(r.chunks) do
        assert.are.equal("string", type(c))
        assert.is_true(#c > 0, "read() returned an empty chunk")
      end
      assert.is_true(r.after_end)
    end)
  end)

  it("reads the rest with read('a') after a first read()", function()
    with_app(function(server)
      local body = string.rep("z", 5000)
      local r = seen(server, "POST", "/?mixed", { body = body })
      assert.are.equal(body, r.body_text)
    end)
  end)

  it("reads a chunked body whole with read('a')", function()
    with_app(function(server)
      local r = seen(server, "POST", "/", {
        headers = { ["Transfer-Encoding"] = "chunked" },
        body = helper.chunked { "hello ", "chunked ", "world" },
      })
      assert.is_true(r.has_body)
      assert.are.equal("hello chunked world", r.body_text)
    end)
  end)

  it("reads a chunked body with read() as it arrives", function()
    with_app(function(server)
      local head = "POST /?chunks HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
      local r = seen_raw(server, { head, "5\r\nfirst\r\n", "6\r\nsecond\r\n", "0\r\n\r\n" }, { pause = 0.05 })
      assert.are.equal("firstsecond", r.body_text)
      assert.is_true(r.after_end)
    end)
  end)

  it("accepts chunk extensions and trailers in a chunked body", function()
    with_app(function(server)
      local head = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      local body = "5;name=value\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n"
      local text, info = helper.raw(server.port, head .. body
        .. "GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.is_true(info.closed)
      local list, err = helper.parse(text)
      assert.is_nil(err, err)
      assert.are.equal(2, #list)
      assert.are.equal("hello!", helper.undump(list[1].body).body_text)
      assert.are.equal("/after", helper.undump(list[2].body).uri)
    end)
  end)

  it("delivers a 300 KB body intact", function()
    with_app(function(server)
      local parts = {}
      for i = 1, 300 do parts[i] = string.format("%04d", i) .. string.rep(string.char(65 + i % 26), 1020) end
      local body = table.concat(parts)
      local r = seen(server, "PUT", "/", { body = body })
      assert.are.equal(#body, #r.body_text)
      assert.are.equal(body, r.body_text)
    end)
  end)

  it("reports the protocol of the request", function()
    with_app(function(server)
      assert.are.equal("HTTP/1.1", seen(server, "GET", "/").protocol)
      local r = seen_raw(server, "GET / HTTP/1.0\r\n\r\n")
      assert.are.equal("HTTP/1.0", r.protocol)
    end)
  end)

  it("reports scheme, peer address, server name from Host, and server port", function()
    with_app(function(server)
      local r = seen_raw(server, "GET / HTTP/1.1\r\nHost: example.test:8080\r\nConnection: close\r\n\r\n")
      assert.are.equal("http", r.scheme)
      assert.are.equal("127.0.0.1", r.remote_addr)
      assert.are.equal("example.test", r.server_name)
      assert.are.equal(server.port, r.server_port)
      assert.are.equal("integer", r.port_type)
    end)
  end)

  it("has an empty params table for a single-file app", function()
    with_app(function(server)
      assert.are.same({}, seen(server, "GET", "/x/y").params)
    end)
  end)

  it("gives each request an integer id unique within the server's life", function()
    with_app(function(server)
      local ids = {}
      for _ = 1, 5 do
        local r = seen(server, "GET", "/")
        assert.are.equal("integer", r.id_type)
        assert.is_nil(ids[r.id], "id reused: " .. tostring(r.id))
        ids[r.id] = true
      end
      -- and across requests on one keep-alive connection
      local c = helper.connect(server.port)
      finally(function() c:close() end)
      for _ = 1, 3 do
        c:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        local r = helper.undump(c:response().body)
        assert.is_nil(ids[r.id], "id reused: " .. tostring(r.id))
        ids[r.id] = true
      end
    end)
  end)
end)
