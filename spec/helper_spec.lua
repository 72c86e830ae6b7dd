-- Unit specs for the spec helper's own response parser, so that a failing
-- integration spec points at the server, not at the test tooling.
local helper = require "helper"

describe("spec helper response parser", function()
  it("splits pipelined responses with content-length and chunked bodies", function()
    local text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello"
      .. "HTTP/1.1 100 Continue\r\n\r\n"
      .. "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
      .. "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
      .. "HTTP/1.0 200 OK\r\n\r\nuntil close"
    local list, err = helper.parse(text, { methods = { "GET", "GET", "HEAD", "GET" } })
    assert.is_nil(err)
    assert.are.equal(5, #list)
    assert.are.equal("hello", list[1].body)
    assert.are.equal("1, 2", list[1].headers["x-a"])
    assert.are.same({ "1", "2" }, helper.header_values(list[1], "x-a"))
    assert.are.equal(100, list[2].status)
    assert.are.equal(404, list[3].status)
    assert.are.equal("abcde", list[3].body)
    assert.are.same({ "abc", "de" }, list[3].chunks)
    assert.are.equal("", list[4].body) -- HEAD: no body despite content-length
    assert.are.equal("until close", list[5].body)
    assert.is_true(list[5].close_delimited)
  end)

  it("reports a truncated body", function()
    local list, err = helper.parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert.are.equal(0, #list)
    assert.matches("body cut short", err)
  end)

  it("builds requests with content-length and repeated headers", function()
    local bytes = helper.build_request(80, "POST", "/x", {
      headers = { { "Cookie", "a=1" }, { "Cookie", "b=2" } }, body = "abc" })
    assert.are.equal("POST /x HTTP/1.1\r\nHost: 127.0.0.1:80\r\nCookie: a=1\r\nCookie: b=2\r\n"
      .. "Connection: close\r\nContent-Length: 3\r\n\r\nabc", bytes)
  end)

  it("encodes chunked bodies", function()
    assert.are.equal("3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n", helper.chunked { "abc", "", "d" })
  end)

  it("round-trips values through the fixture dump function", function()
    local dump = load(helper.DUMP .. "\nreturn dump")()
    local v = { a = "x\r\ny\0", b = { 1, 2.5, true }, n = 3 }
    assert.are.same(v, helper.undump(dump(v)))
  end)
end)
