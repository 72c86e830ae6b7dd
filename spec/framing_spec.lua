-- Strict HTTP/1.1 message framing (RFC 9112): request heads whose framing or
-- Host is not what the grammar allows are refused with a status, the server
-- closes that connection, no handler runs, and the next client (a new
-- connection with a normal GET) is served 200. Each request below goes over
-- a fresh raw connection.
--
-- Rules:
--   1. obsolete line folding (obs-fold, RFC 9112 §5.2) in a header, and a
--      whitespace-preceded line right after the request line (§2.2): 400.
--   2. Transfer-Encoding on an HTTP/1.0 request (§6.1: the framing is faulty,
--      even with a Content-Length): 400.
--   3. a Host value that is not uri-host [ ":" port ] (RFC 9110 §7.2,
--      RFC 9112 §3.2: 400 for an invalid Host field value). See the Host
--      section below for what is valid and what is not.
--   4. a request line without a well-formed HTTP-version: 400; 505 stays for
--      a well-formed version the server does not implement (HTTP/2.0, and
--      also HTTP/3.0 or HTTP/9.9, which are 400 today).
--   5. a chunk size that alone takes the body over --max-body-size: 413 as
--      soon as the chunk-size line is read, without waiting for the chunk
--      data (as a Content-Length over the limit already is).
local helper = require "helper"

-- Every route but /state counts its runs, so a spec can check that a refused
-- request never reached a handler.
local APP = {
  ["_lib/state.lua"] = [[return { hits = 0 }]],
  ["state.lua"] = helper.STATE_ROUTE,
  ["index.lua"] = [[
local state = require "_lib.state"
return function(req)
  state.hits = state.hits + 1
  return { status = 200, body = "hello\n" }
end
]],
  ["hello.lua"] = [[
local state = require "_lib.state"
return function(req)
  state.hits = state.hits + 1
  return { status = 200, headers = { ["content-type"] = "text/plain" }, body = "hello\n" }
end
]],
  -- reads the whole body; reports what it saw (one field a line)
  ["echo.lua"] = [[
local state = require "_lib.state"
return function(req)
  state.hits = state.hits + 1
  local body = req.body and req.body:read("a") or ""
  local lines = {
    "method=" .. req.request_method,
    "protocol=" .. req.protocol,
    "host=" .. tostring(req.headers.host),
    "server_name=" .. tostring(req.server_name),
    "x-a=" .. tostring(req.headers["x-a"]),
    "body=" .. body,
  }
  return { status = 200, headers = { ["content-type"] = "text/plain" },
    body = table.concat(lines, "\n") .. "\n" }
end
]],
}

local function with_app(args, fn)
  return helper.with_server({ files = APP, args = args or {} }, fn)
end

local function hits(server)
  return helper.state(server).hits
end

-- Sends `bytes` on a fresh connection and checks, in this order: one
-- response with status `status`, `Connection: close` on it, the server
-- closed the connection, no handler ran, and a new client is served 200.
-- opts.timeout: how long to wait for the response and the close;
-- opts.handler_may_run: skip the handler check (a chunked body is refused
-- while its handler, started at the head, is waiting to read it).
local function expect_rejected(server, bytes, status, opts)
  opts = opts or {}
  local before = hits(server)
  local text, info = helper.raw(server.port, bytes, { timeout = opts.timeout or 3 * helper.slow })
  local what = string.format("request %q", bytes)
  local list, err = helper.parse(text)
  assert(list[1], string.format("%s: no response (%s; connection %s after %.2fs); raw: %q",
    what, tostring(err), info.ended, info.elapsed, text))
  local res = list[1]
  assert(res.status == status, string.format("%s: expected %d, got %d; raw: %q",
    what, status, res.status, text))
  assert(#list == 1 and not err, string.format("%s: expected exactly one response; raw: %q", what, text))
  assert((res.headers.connection or ""):lower() == "close",
    string.format("%s: %d without Connection: close; raw: %q", what, status, text))
  assert(info.closed, string.format("%s: the server did not close the connection after its %d (waited %.2fs)",
    what, status, info.elapsed))
  local after = hits(server)
  assert(opts.handler_may_run or after == before,
    string.format("%s: a handler ran (%d run(s)) for a refused request", what, after - before))
  helper.assert_serves(server.port, "/hello")
  return res, info
end

-- Sends `bytes` (a complete request with Connection: close) on a fresh
-- connection and checks that it is served 200 by a handler, then that a new
-- client is served too. Returns the response.
local function expect_served(server, bytes, opts)
  opts = opts or {}
  local text, info = helper.raw(server.port, bytes, { timeout = opts.timeout or 3 * helper.slow })
  local what = string.format("request %q", bytes)
  local list, err = helper.parse(text)
  assert(list[1], string.format("%s: no response (%s; connection %s); raw: %q",
    what, tostring(err), info.ended, text))
  assert(list[1].status == 200, string.format("%s: expected 200, got %d; raw: %q",
    what, list[1].status, text))
  assert(#list == 1 and not err, string.format("%s: expected exactly one response; raw: %q", what, text))
  assert(info.closed, what .. ": not closed after a Connection: close request")
  helper.assert_serves(server.port, "/hello")
  return list[1]
end

-- Runs check(variant) for every variant and fails with every failure
-- message at once, so one run shows how each variant is answered.
local function each(variants, check)
  local failures = {}
  for i, v in ipairs(variants) do
    local ok, e = pcall(check, v)
    if not ok then
      if type(e) == "table" then e = e.message or tostring(e) end
      failures[#failures + 1] = string.format("[variant %d] %s", i, tostring(e))
    end
  end
  if #failures > 0 then
    assert(false, #failures .. " of " .. #variants .. " variant(s) failed:\n" .. table.concat(failures, "\n"))
  end
end

local function get_with(header_lines, protocol, path)
  return string.format("GET %s %s\r\n%sConnection: close\r\n\r\n",
    path or "/hello", protocol or "HTTP/1.1", header_lines)
end

---------------------------------------------------------------------------
-- 1. obs-fold
---------------------------------------------------------------------------

describe("obsolete line folding (RFC 9112 §5.2)", function()
  it("answers 400 and closes for a header continued on a line that starts with a space or a tab; no handler runs", function()
    with_app(nil, function(server)
      each({
        -- the example: a continuation line starting with two spaces
        get_with("Host: x\r\nX-A: a\r\n  continued\r\n"),
        -- a tab as the continuation's first byte
        get_with("Host: x\r\nX-A: a\r\n\tcontinued\r\n"),
        -- one space, then more text
        get_with("Host: x\r\nX-A: a\r\n continued and more\r\n"),
        -- two continuation lines
        get_with("Host: x\r\nX-A: a\r\n b\r\n\tc\r\n"),
        -- the folded header is the last one
        get_with("X-A: a\r\n continued\r\nHost: x\r\n"),
        -- folding inside Host itself
        get_with("Host: x\r\n y\r\n"),
        -- on a POST with a body, to the route that reads it
        "POST /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n continued\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
      }, function(bytes)
        expect_rejected(server, bytes, 400)
      end)
    end)
  end)

  it("answers 400 and closes for a whitespace-preceded line between the request line and the first header (§2.2)", function()
    with_app(nil, function(server)
      -- RFC 9112 §2.2 allows rejecting it or ignoring the line; moonring rejects.
      each({
        "GET /hello HTTP/1.1\r\n X-A: a\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /hello HTTP/1.1\r\n\tX-A: a\r\nHost: x\r\nConnection: close\r\n\r\n",
      }, function(bytes)
        expect_rejected(server, bytes, 400)
      end)
    end)
  end)

  it("still serves ordinary headers with spaces and tabs inside and around their values", function()
    with_app(nil, function(server)
      local res = expect_served(server,
        "GET /echo HTTP/1.1\r\nHost: x\r\nX-A: \t a  b\tc \t\r\nConnection: close\r\n\r\n")
      -- leading OWS is not part of the value; the inner spaces and tab are
      -- (trailing OWS is not checked here)
      assert(res.body:find("\nx-a=a  b\tc", 1, true), res.body)
    end)
  end)
end)

---------------------------------------------------------------------------
-- 2. Transfer-Encoding on HTTP/1.0
---------------------------------------------------------------------------

describe("Transfer-Encoding on an HTTP/1.0 request (RFC 9112 §6.1)", function()
  it("answers 400 and closes for a chunked body on HTTP/1.0; the handler does not run", function()
    with_app(nil, function(server)
      local body = helper.chunked { "hello" }
      each({
        "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" .. body,
        "POST /echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" .. body,
        -- keep-alive asked: still refused, still closed
        "POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" .. body,
        -- the coding in another case, a list ending in chunked
        "POST /echo HTTP/1.0\r\nTransfer-Encoding: Chunked\r\n\r\n" .. body,
        -- no body at all (the zero chunk alone), on a GET
        "GET /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      }, function(bytes)
        expect_rejected(server, bytes, 400)
      end)
    end)
  end)

  it("answers 400 and closes for Transfer-Encoding with Content-Length on HTTP/1.0", function()
    with_app(nil, function(server)
      each({
        "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
        "POST /echo HTTP/1.0\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
          .. helper.chunked { "hello" },
        -- a coding moonring does not know before chunked is 501 on HTTP/1.1;
        -- on HTTP/1.0 any Transfer-Encoding makes the framing faulty: 400
        "POST /echo HTTP/1.0\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" .. helper.chunked { "hello" },
      }, function(bytes)
        expect_rejected(server, bytes, 400)
      end)
    end)
  end)

  it("still decodes a chunked body on HTTP/1.1 and reads a Content-Length body on HTTP/1.0", function()
    with_app(nil, function(server)
      local res = expect_served(server, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        .. "Connection: close\r\n\r\n" .. helper.chunked { "hel", "lo" })
      assert.matches("\nbody=hello\n", res.body)
      res = expect_served(server, "POST /echo HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello")
      assert.matches("\nbody=hello\n", res.body)
      assert.matches("\nprotocol=HTTP/1.0\n", res.body)
    end)
  end)
end)

---------------------------------------------------------------------------
-- 3. Host validity
---------------------------------------------------------------------------
-- What is decided here (RFC 9110 §7.2, RFC 9112 §3.2 and §3.3, RFC 3986
-- §3.2.2 and §3.2.3):
--
--   Host = uri-host [ ":" port ], after the field's leading and trailing
--   OWS is stripped; uri-host = IP-literal / IPv4address / reg-name.
--   * reg-name = *( unreserved / pct-encoded / sub-delims ): letters,
--     digits, "-" "." "_" "~", "%" HEXDIG HEXDIG, and "!$&'()*+,;=". So a
--     space, "/", "@", "?", "#", a bare or malformed "%", and any byte
--     >= 0x80 (raw UTF-8: IDNs go as xn-- A-labels) make the Host invalid.
--     A name that looks like a dotted quad but is not an IPv4address
--     ("256.1.1.1") is a reg-name by RFC 3986's first-match rule: valid.
--   * IP-literal = "[" ( IPv6address / IPvFuture ) "]": a "[" must be closed
--     by "]", and only a port may follow the "]".
--   * port = *DIGIT: a non-digit ("x:port") is invalid. An empty port
--     ("x:") matches the grammar and is accepted (RFC 3986 §3.2.3 lets a
--     URI have an empty port; it means the default). A port above 65535
--     ("x:99999999") matches *DIGIT but cannot name a TCP port, which is
--     what the http scheme's port is (RFC 9110 §4.2.1): invalid, 400.
--   * An empty Host (`Host:` or `Host: ` with only whitespace) on HTTP/1.1
--     is accepted: RFC 9112 §3.2 has a client send an empty Host when the
--     target URI has no authority, and §3.3 then leaves the authority empty
--     and lets the server use its own (a configured default); it "can
--     reject", not must. moonring serves it.
--   * The check applies to every Host value, HTTP/1.0 included (§3.2: "a
--     Host header field with an invalid field value" gets 400 on any
--     request message).

describe("the Host header value (RFC 9110 §7.2, RFC 9112 §3.2)", function()
  it("answers 400 and closes for a Host that is not host[:port]; no handler runs", function()
    with_app(nil, function(server)
      each({
        get_with("Host: bad host\r\n"),        -- a space inside
        get_with("Host: a/b\r\n"),             -- "/" is not in reg-name
        get_with("Host: x:port\r\n"),          -- port = *DIGIT
        get_with("Host: x:99999999\r\n"),      -- above 65535
        get_with("Host: x:65536\r\n"),         -- just above 65535
        get_with("Host: [::1\r\n"),            -- IP-literal not closed
        get_with("Host: ::1\r\n"),             -- an IPv6 address needs brackets
        get_with("Host: [::1]x\r\n"),          -- only ":" port may follow "]"
        get_with("Host: user@example.com\r\n"),-- no userinfo in Host
        get_with("Host: example.com?q\r\n"),   -- "?" is not in reg-name
        get_with("Host: ex%zzample.com\r\n"),  -- malformed pct-encoding
        get_with("Host: b\195\188cher.example\r\n"), -- raw UTF-8 (not an A-label)
        get_with("Host: x:80:80\r\n"),         -- two ports
        -- on HTTP/1.0 too, and on a POST with a body to the reading route
        get_with("Host: bad host\r\n", "HTTP/1.0"),
        "POST /echo HTTP/1.1\r\nHost: a/b\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
      }, function(bytes)
        expect_rejected(server, bytes, 400)
      end)
    end)
  end)

  it("serves a valid Host: names, ports, IPv4 and IPv6 literals, A-labels, pct-encoded and sub-delims", function()
    with_app(nil, function(server)
      each({
        { "example.com", "example.com" },
        { "example.com:8080", "example.com" },
        { "[::1]:8080", "[::1]" },
        { "[::1]", "[::1]" },
        { "127.0.0.1", "127.0.0.1" },
        { "127.0.0.1:80", "127.0.0.1" },
        { "xn--bcher-kva.example", "xn--bcher-kva.example" },
        { "localhost", "localhost" },
        { "EXAMPLE.com", nil },          -- case is not significant; not checked further
        { "my_host-1.example~x", nil },  -- unreserved characters
        { "ex%41mple.com", nil },        -- pct-encoded
        { "a!$&'()*+,;=b", nil },        -- sub-delims
        { "256.1.1.1", nil },            -- not an IPv4address, so a reg-name
        { "example.com:", nil },         -- empty port
        { "example.com:0", nil },
        { "example.com:65535", nil },
      }, function(v)
        local res = expect_served(server, get_with("Host: " .. v[1] .. "\r\n", nil, "/echo"))
        assert(res.body:find("\nhost=" .. v[1] .. "\n", 1, true),
          "Host " .. v[1] .. " not passed on as sent: " .. res.body)
        if v[2] then
          assert(res.body:find("\nserver_name=" .. v[2] .. "\n", 1, true),
            "Host " .. v[1] .. ": server_name is not " .. v[2] .. ": " .. res.body)
        end
      end)
    end)
  end)

  -- the OWS around a field value is not part of it (RFC 9112 §5): the Host
  -- is validated without it
  it("serves a valid Host with whitespace around the value", function()
    with_app(nil, function(server)
      each({
        get_with("Host:   example.com:8080\r\n", nil, "/echo"),
        get_with("Host:\texample.com\r\n", nil, "/echo"),
        get_with("Host: example.com:8080 \t\r\n", nil, "/echo"),
        get_with("Host: [::1]:8080 \r\n", nil, "/echo"),
      }, function(bytes)
        local res = expect_served(server, bytes)
        assert(res.body:find("\nserver_name=", 1, true), res.body)
      end)
    end)
  end)

  it("serves an empty Host on HTTP/1.1 (RFC 9112 §3.2: the target has no authority)", function()
    with_app(nil, function(server)
      each({
        get_with("Host:\r\n"),
        get_with("Host: \r\n"),
        get_with("Host:\r\n", nil, "/echo"),
      }, function(bytes)
        expect_served(server, bytes)
      end)
    end)
  end)
end)

---------------------------------------------------------------------------
-- 4. HTTP-version
---------------------------------------------------------------------------

describe("the request line's HTTP-version (RFC 9112 §2.3, §3)", function()
  it("answers 400, not 505, for a request line without a well-formed version", function()
    with_app(nil, function(server)
      each({
        "GET /\r\n\r\n",                                  -- no version at all (HTTP/0.9 style)
        "GET /hello\r\nHost: x\r\n\r\n",                  -- the same, with a header after it
        "GET / \r\nHost: x\r\n\r\n",                      -- the separator, then nothing
        "GET / HTTP/1\r\nHost: x\r\n\r\n",                -- no minor version
        "GET / HTTP/\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/11.1\r\nHost: x\r\n\r\n",              -- one DIGIT each side of the dot
        "GET / http/1.1\r\nHost: x\r\n\r\n",              -- HTTP-name is case-sensitive
        "GET / HTTPS/1.1\r\nHost: x\r\n\r\n",
      }, function(bytes)
        expect_rejected(server, bytes, 400)
      end)
    end)
  end)

  it("keeps 505 for HTTP/2.0 (and HTTP/0.9)", function()
    with_app(nil, function(server)
      each({
        "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        "GET / HTTP/0.9\r\nHost: x\r\n\r\n",
      }, function(bytes)
        expect_rejected(server, bytes, 505)
      end)
    end)
  end)

  -- The same rule read the other way: HTTP-version = "HTTP/" DIGIT "." DIGIT,
  -- so HTTP/3.0 or HTTP/9.9 is well-formed, and unsupported: 505, not 400.
  -- (Not tested: HTTP/1.2 and other 1.x with a higher minor, which RFC 9110
  -- §2.5 says a server SHOULD process as HTTP/1.1.)
  it("answers 505, not 400, for other well-formed major versions", function()
    with_app(nil, function(server)
      each({
        "GET / HTTP/3.0\r\nHost: x\r\n\r\n",
        "GET / HTTP/9.9\r\nHost: x\r\n\r\n",
      }, function(bytes)
        expect_rejected(server, bytes, 505)
      end)
    end)
  end)

  it("serves HTTP/1.1 and HTTP/1.0", function()
    with_app(nil, function(server)
      expect_served(server, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      expect_served(server, "GET / HTTP/1.0\r\n\r\n")
    end)
  end)
end)

---------------------------------------------------------------------------
-- 5. a chunk size over --max-body-size
---------------------------------------------------------------------------

describe("a chunk size over --max-body-size (1k here)", function()
  local ARGS = { "--max-body-size", "1k" }
  local HEAD = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
  -- the 413 must come from the chunk-size line alone: wait for it no longer
  -- than this, far less than --header-timeout (10 s), the time the server
  -- gives a client that stops sending its body
  local QUICK = 2 * helper.slow

  it("answers 413 and closes as soon as a chunk-size line alone is over the limit, without the chunk data", function()
    with_app(ARGS, function(server)
      each({
        HEAD .. "100000\r\n",                 -- 1 MiB
        HEAD .. "401\r\n",                    -- 1025 bytes: one over
        HEAD .. "100000;name=value\r\n",      -- with a chunk extension
        HEAD .. "0000100000\r\n",             -- leading zeros
        -- a first chunk within the limit, then one that takes the total over
        HEAD .. "200\r\n" .. string.rep("a", 512) .. "\r\n" .. "201\r\n",
        -- on a keep-alive connection that asked nothing else
        "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n",
      }, function(bytes)
        expect_rejected(server, bytes, 413, { timeout = QUICK, handler_may_run = true })
      end)
    end)
  end)

  it("answers 413 at once for a Content-Length over the limit, with no body sent (as today)", function()
    with_app(ARGS, function(server)
      expect_rejected(server, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n", 413,
        { timeout = QUICK })
    end)
  end)

  it("accepts chunks that add up to exactly the limit", function()
    with_app(ARGS, function(server)
      local res = expect_served(server, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        .. "Connection: close\r\n\r\n" .. helper.chunked { string.rep("a", 512), string.rep("b", 512) })
      assert(res.body:find("\nbody=" .. string.rep("a", 512) .. string.rep("b", 512) .. "\n", 1, true), res.body)
      res = expect_served(server, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        .. "Connection: close\r\n\r\n400\r\n" .. string.rep("c", 1024) .. "\r\n0\r\n\r\n")
      assert(res.body:find("\nbody=" .. string.rep("c", 1024) .. "\n", 1, true), "1024-byte chunk not echoed")
    end)
  end)
end)
