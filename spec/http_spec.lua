-- HTTP/1.x connection behaviour (DESIGN.md section 5): keep-alive,
-- pipelining, HTTP/1.0, Expect: 100-continue, HEAD, Date, Connection: close.
-- Everything here goes over raw sockets.
local helper = require "helper"

local APP = {
  -- GET /path?x -> "GET /path\n"; reads and appends any request body.
  ["app.lua"] = [[
local moonring = require "moonring"
return function(req)
  local text = req.request_method .. " " .. req.uri
  if req.body and (req.query_string or ""):find("partial", 1, true) then
    text = text .. " first=" .. #req.body:read()
  elseif req.body and not (req.query_string or ""):find("ignore", 1, true) then
    text = text .. " body=" .. req.body:read("a")
  end
  local q = req.query_string or ""
  local s = tonumber(q:match("sleep=([%d.]+)"))
  if s then moonring.sleep(s) end
  local headers = { ["content-type"] = "text/plain" }
  if q:find("close", 1, true) then headers.connection = "close" end
  if q:find("fixed", 1, true) then text = "fixed body" end
  if q:find("ignore", 1, true) then
    return { status = 200, headers = headers, body = "ignored " .. req.uri .. "\n" }
  end
  if q:find("stream", 1, true) then
    local parts = { "str", "eam", "ed" }
    local i = 0
    return { status = 200, headers = headers, body = function()
      i = i + 1
      return parts[i]
    end }
  end
  return { status = 200, headers = headers, body = text .. "\n" }
end
]],
}

local function with_app(fn)
  return helper.with_server({ files = APP, entry = "app.lua" }, fn)
end

local DATE = "^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$"

describe("HTTP/1.1 connections", function()
  it("serves two requests one after the other on one keep-alive connection", function()
    with_app(function(server)
      local c = helper.connect(server.port)
      finally(function() c:close() end)
      c:send("GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
      local r1 = c:response()
      assert.are.equal(200, r1.status)
      assert.are.equal("GET /first\n", r1.body)
      c:send("GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
      local r2 = c:response()
      assert.are.equal(200, r2.status)
      assert.are.equal("GET /second\n", r2.body)
    end)
  end)

  it("answers three pipelined requests sent in one write, in request order", function()
    with_app(function(server)
      local bytes = "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        .. "GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
      local text, info = helper.raw(server.port, bytes)
      assert.is_true(info.closed)
      local list, err = helper.parse(text)
      assert.is_nil(err, err)
      assert.are.equal(3, #list)
      assert.are.equal("GET /one\n", list[1].body)
      assert.are.equal("POST /two body=abc\n", list[2].body)
      assert.are.equal("GET /three\n", list[3].body)
    end)
  end)

  it("keeps pipelined responses in order when an earlier handler is slower", function()
    with_app(function(server)
      local bytes = "GET /slow?sleep=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "GET /last?sleep=0.1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
      local text, info = helper.raw(server.port, bytes)
      assert.is_true(info.closed)
      local list, err = helper.parse(text)
      assert.is_nil(err, err)
      assert.are.equal(3, #list)
      assert.are.equal("GET /slow\n", list[1].body)
      assert.are.equal("GET /fast\n", list[2].body)
      assert.are.equal("GET /last\n", list[3].body)
    end)
  end)

  it("skips a body the handler did not read before parsing the next pipelined request", function()
    with_app(function(server)
      local smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
      local bytes = "POST /a?ignore HTTP/1.1\r\nHost: x\r\nContent-Length: " .. #smuggled .. "\r\n\r\n" .. smuggled
        .. "POST /b?ignore HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. helper.chunked { smuggled }
        .. "POST /c?partial HTTP/1.1\r\nHost: x\r\nContent-Length: " .. (#smuggled + 4) .. "\r\n\r\n"
        .. "abcd" .. smuggled
        .. "GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
      local text, info = helper.raw(server.port, bytes)
      assert.is_true(info.closed)
      local list, err = helper.parse(text)
      assert.is_nil(err, err)
      assert.are.equal(4, #list, text)
      assert.are.equal("ignored /a\n", list[1].body)
      assert.are.equal("ignored /b\n", list[2].body)
      assert.matches("^POST /c first=%d+\n$", list[3].body)
      assert.are.equal("GET /next\n", list[4].body)
      assert.is_nil(text:find("smuggled", 1, true))
    end)
  end)

  it("answers 50 pipelined requests in order", function()
    with_app(function(server)
      local reqs = {}
      for i = 1, 50 do
        reqs[i] = "GET /r" .. i .. " HTTP/1.1\r\nHost: x\r\n" .. (i == 50 and "Connection: close\r\n" or "") .. "\r\n"
      end
      local text, info = helper.raw(server.port, table.concat(reqs))
      assert.is_true(info.closed)
      local list, err = helper.parse(text)
      assert.is_nil(err, err)
      assert.are.equal(50, #list)
      for i = 1, 50 do assert.are.equal("GET /r" .. i .. "\n", list[i].body) end
    end)
  end)

  it("serves 100 requests one after another on one connection", function()
    with_app(function(server)
      local c = helper.connect(server.port)
      for i = 1, 100 do
        c:send("GET /n" .. i .. " HTTP/1.1\r\nHost: x\r\n\r\n")
        local res = c:response()
        assert.are.equal("GET /n" .. i .. "\n", res.body)
      end
      c:close()
    end)
  end)

  it("answers OPTIONS * and an authority-form CONNECT with a status, then keeps serving", function()
    with_app(function(server)
      for _, bytes in ipairs {
        "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
      } do
        local text, info = helper.raw(server.port, bytes, { timeout = 3 * helper.slow })
        assert.is_true(info.closed, bytes)
        local res = helper.parse_response(text)
        assert.is_true(res.status >= 200 and res.status < 600, bytes)
        helper.assert_serves(server.port, "/")
      end
    end)
  end)

  it("answers a CONNECT with Connection: close and closes, since it tunnels nothing", function()
    with_app(function(server)
      local text, info = helper.raw(server.port,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", { timeout = 3 * helper.slow })
      assert.is_true(info.closed, text)
      local res = helper.parse_response(text)
      assert.are.equal("close", (res.headers["connection"] or ""):lower())
      helper.assert_serves(server.port, "/")
    end)
  end)

  it("answers pipelined HEAD and GET with a body only for the GET", function()
    with_app(function(server)
      local bytes = "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "GET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
      local text = helper.raw(server.port, bytes)
      local list, err = helper.parse(text, { methods = { "HEAD", "GET" } })
      assert.is_nil(err, err)
      assert.are.equal(2, #list)
      assert.are.equal(200, list[1].status)
      assert.are.equal("GET /g\n", list[2].body)
    end)
  end)

  it("closes the connection after the response when the client sends Connection: close", function()
    with_app(function(server)
      local text, info = helper.raw(server.port,
        "GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", { timeout = 3 * helper.slow })
      assert.is_true(info.closed, "server kept the connection open")
      local res = helper.parse_response(text)
      assert.are.equal(200, res.status)
      assert.are.equal("GET /bye\n", res.body)
      assert.matches("close", (res.headers.connection or ""):lower())
    end)
  end)

  it("closes the connection after the response when the handler sets connection: close", function()
    with_app(function(server)
      local c = helper.connect(server.port)
      finally(function() c:close() end)
      c:send("GET /x?close HTTP/1.1\r\nHost: x\r\n\r\n")
      local res = c:response()
      assert.are.equal(200, res.status)
      assert.are.equal("GET /x\n", res.body)
      assert.are.equal("close", (res.headers.connection or ""):lower())
      assert.is_true(c:wait_closed())
    end)
  end)

  it("sends a Date header on every response, whatever the status", function()
    with_app(function(server)
      for _, path in ipairs { "/ok", "/x?stream" } do
        local res = helper.get(server.port, path)
        assert.are.equal(200, res.status)
        assert.matches(DATE, res.headers.date or "")
      end
      local bad = helper.parse_response((helper.raw(server.port, "BREW / HTTP/1.1\r\n\r\n")))
      assert.are.equal(400, bad.status)
      assert.matches(DATE, bad.headers.date or "")
    end)
  end)
end)

describe("HEAD", function()
  it("answers with the headers of the GET, content-length included, and no body", function()
    with_app(function(server)
      local get = helper.get(server.port, "/same?fixed")
      assert.are.equal("fixed body\n", get.body)
      local text, info = helper.raw(server.port,
        "HEAD /same?fixed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.is_true(info.closed)
      local head_end = text:find("\r\n\r\n", 1, true)
      assert.is_truthy(head_end, "no end of head in " .. text)
      assert.are.equal(#text, head_end + 3, "HEAD response carried body bytes: " .. text)
      local res = helper.parse_response(text, { head = true })
      assert.are.equal(200, res.status)
      assert.are.equal(tostring(#get.body), res.headers["content-length"])
      assert.are.equal(get.headers["content-type"], res.headers["content-type"])
    end)
  end)

  it("sends no body for a streamed (function) body either", function()
    with_app(function(server)
      local text = helper.raw(server.port, "HEAD /x?stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local head_end = text:find("\r\n\r\n", 1, true)
      assert.is_truthy(head_end, "no end of head in " .. text)
      assert.are.equal(#text, head_end + 3, "HEAD response carried body bytes: " .. text)
      assert.matches("^HTTP/1%.1 200", text)
    end)
  end)
end)

describe("HTTP/1.0", function()
  it("closes the connection after the response when keep-alive is not asked for", function()
    with_app(function(server)
      local text, info = helper.raw(server.port, "GET /old HTTP/1.0\r\n\r\n", { timeout = 3 * helper.slow })
      assert.is_true(info.closed, "server kept an HTTP/1.0 connection open")
      local res = helper.parse_response(text)
      assert.are.equal(200, res.status)
      assert.are.equal("GET /old\n", res.body)
      assert.is_nil(res.headers["transfer-encoding"])
    end)
  end)

  it("sends a function body close-delimited, without chunked encoding", function()
    with_app(function(server)
      local text, info = helper.raw(server.port, "GET /x?stream HTTP/1.0\r\n\r\n", { timeout = 3 * helper.slow })
      assert.is_true(info.closed)
      local res = helper.parse_response(text)
      assert.are.equal(200, res.status)
      assert.is_nil(res.headers["transfer-encoding"])
      assert.are.equal("streamed", res.body)
    end)
  end)

  it("keeps the connection open for a second request with Connection: keep-alive", function()
    with_app(function(server)
      local c = helper.connect(server.port)
      finally(function() c:close() end)
      c:send("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
      local r1 = c:response()
      assert.are.equal(200, r1.status)
      assert.are.equal("GET /a\n", r1.body)
      assert.are.equal("keep-alive", (r1.headers.connection or ""):lower())
      c:send("GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
      local r2 = c:response()
      assert.are.equal(200, r2.status)
      assert.are.equal("GET /b\n", r2.body)
    end)
  end)
end)

describe("Expect: 100-continue", function()
  it("sends an interim 100 Continue before reading the body, then the final response", function()
    with_app(function(server)
      local c = helper.connect(server.port)
      finally(function() c:close() end)
      c:send("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
      local interim = c:response()
      assert.are.equal(100, interim.status)
      assert.are.equal("HTTP/1.1", interim.protocol)
      c:send("hello")
      local res = c:response()
      assert.are.equal(200, res.status)
      assert.are.equal("POST /up body=hello\n", res.body)
    end)
  end)

  it("answers once, in order, when the client sends the body without waiting for 100", function()
    with_app(function(server)
      local text, info = helper.raw(server.port, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        .. "Expect: 100-continue\r\nConnection: close\r\n\r\nhello")
      assert.is_true(info.closed)
      local list, err = helper.parse(text)
      assert.is_nil(err, err)
      local final = list[#list]
      assert.are.equal(200, final.status)
      assert.are.equal("POST /up body=hello\n", final.body)
      for i = 1, #list - 1 do assert.are.equal(100, list[i].status) end
      assert.is_true(#list <= 2, text)
    end)
  end)

  it("still answers when the handler never reads the announced body", function()
    with_app(function(server)
      local c = helper.connect(server.port)
      c:send("POST /up?ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
      local res = c:response()
      if res.status == 100 then
        c:send("hello")
        res = c:response()
      end
      assert.are.equal(200, res.status)
      assert.are.equal("ignored /up\n", res.body)
    end)
  end)
end)
