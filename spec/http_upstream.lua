-- A raw HTTP upstream for spec/http_client_spec.lua: a LuaSocket server on
-- loopback that answers with hand-written bytes, right or deliberately wrong,
-- which no real server would send. Many connections at once, each in a
-- coroutine under one socket.select loop. Run as
--   lua5.4 spec/http_upstream.lua PORTFILE
-- It writes its port to PORTFILE once it listens, and exits by itself after
-- 10 minutes (the spec stops it by pid long before).
--
-- Every answer names the connection that carried it: "conn=ID req=N" (N-th
-- request on connection ID), so a spec can tell reuse from a new connection.
-- Paths (the query string is ignored):
--   /cl          Content-Length body "conn=ID req=N", X-Conn: ID, X-Tag twice (a, b)
--   /slow        /cl after 0.1 s
--   /chunked     chunked body in three chunks sent apart, and a trailer
--   /trailers    a chunked body with a trailer, all in one send
--   /early       "103 Early Hints" and /cl in one send
--   /close       "Connection: close", body until the close
--   /http10      an HTTP/1.0 response without a length, then close
--   /nocontent   204, no body, keep-alive
--   /never       reads the request and never answers
--   /once        /cl, but the next request on that connection is dropped:
--                closed without an answer (a keep-alive race lost)
--   /bad         a Content-Length that is not a number
--   /garbage     not HTTP at all
--   /cut         Content-Length 100, 10 bytes, then close
--   /cutchunked  a chunked body of 64 KiB chunks, closed after 4 of them
--   /extra       /cl followed by bytes nobody asked for
--   /continue    "100 Continue", a pause, then /cl
--   /bigcl       1 MiB with Content-Length (blob)
--   /stats       "accepted=N open=M" (connections, this one included)
--   /isopen/ID   "open" or "closed": connection ID, as this side knows it
local socket = require "socket"
local portfile = ...

local loop = dofile(arg[0]:match("^(.*/)") .. "upstream_loop.lua")
local sleep, Conn = loop.sleep, loop.Conn
local accepted_n, open_n = 0, 0
local by_id = {}

function Conn:close()
  if self.closed then return end
  self.closed = true
  open_n = open_n - 1
  self.c:close()
end

-- The next request: method, path, body; nil once the peer closed.
function Conn:request()
  while not self.buf:find("\r\n\r\n", 1, true) do
    if not self:fill() then return nil end
  end
  local e = self.buf:find("\r\n\r\n", 1, true)
  local head = self.buf:sub(1, e - 1)
  self.buf = self.buf:sub(e + 4)
  local method, path = head:match("^(%S+) ([^%s?]*)")
  local n = tonumber(head:lower():match("\r\ncontent%-length:%s*(%d+)")) or 0
  while #self.buf < n do
    if not self:fill() then return nil end
  end
  local body = self.buf:sub(1, n)
  self.buf = self.buf:sub(n + 1)
  return method, path, body
end

local function blob(n)
  local unit = "0123456789abcdef"
  return unit:rep(n // #unit) .. unit:sub(1, n % #unit)
end

local function cl(conn, tag)
  return "HTTP/1.1 200 OK\r\nContent-Length: " .. #tag .. "\r\nX-Conn: " .. conn.id ..
    "\r\nX-Tag: a\r\nx-tag: b\r\n\r\n" .. tag
end

-- Answers one request; false when the connection is to close.
local function answer(conn, path)
  conn.n = conn.n + 1
  local tag = "conn=" .. conn.id .. " req=" .. conn.n
  if conn.drop_next then return false end
  if path == "/cl" then return conn:send(cl(conn, tag))
  elseif path == "/slow" then
    sleep(0.1)
    return conn:send(cl(conn, tag))
  elseif path == "/chunked" then
    conn:send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n")
    for _, part in ipairs({ "hello ", "chunked ", tag }) do
      conn:send(string.format("%x\r\n%s\r\n", #part, part))
      sleep(0.02)
    end
    return conn:send("0\r\nX-Sum: 3\r\n\r\n")
  elseif path == "/trailers" then
    return conn:send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Conn: " .. conn.id ..
      "\r\n\r\n5\r\nhello\r\n" .. string.format("%x\r\n%s\r\n", #tag + 1, " " .. tag) ..
      "0\r\nX-Checksum: 12345\r\nX-Other: a-long-trailer-value-that-runs-past-the-buffer\r\n\r\n")
  elseif path == "/early" then
    return conn:send("HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" .. cl(conn, tag))
  elseif path == "/close" then
    conn:send("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" .. tag .. " until close")
    return false
  elseif path == "/http10" then
    conn:send("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" .. tag .. " http/1.0")
    return false
  elseif path == "/nocontent" then
    return conn:send("HTTP/1.1 204 No Content\r\nX-Tag: " .. tag .. "\r\n\r\n")
  elseif path == "/never" then
    while conn:fill() do end
    return false
  elseif path == "/once" then
    conn.drop_next = true
    return conn:send(cl(conn, tag))
  elseif path == "/bad" then
    return conn:send("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n")
  elseif path == "/garbage" then
    return conn:send("SSH-2.0-OpenSSH_9.2\r\n\r\n")
  elseif path == "/cut" then
    conn:send("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    return false
  elseif path == "/cutchunked" then
    conn:send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ = 1, 4 do conn:send(string.format("%x\r\n%s\r\n", 65536, blob(65536))) end
    sleep(0.05)
    return false
  elseif path == "/extra" then
    return conn:send(cl(conn, tag) .. "HTTP/1.1 200 OK\r\n")
  elseif path == "/continue" then
    conn:send("HTTP/1.1 100 Continue\r\n\r\n")
    sleep(0.05)
    return conn:send(cl(conn, tag))
  elseif path == "/bigcl" then
    local b = blob(1024 * 1024)
    return conn:send("HTTP/1.1 200 OK\r\nContent-Length: " .. #b .. "\r\n\r\n" .. b)
  elseif path:match("^/isopen/%d+$") then
    local c = by_id[tonumber(path:match("%d+$"))]
    local s = c and not c.closed and "open" or "closed"
    return conn:send("HTTP/1.1 200 OK\r\nContent-Length: " .. #s .. "\r\nConnection: close\r\n\r\n" .. s)
      and false
  elseif path == "/stats" then
    local s = "accepted=" .. accepted_n .. " open=" .. open_n
    return conn:send("HTTP/1.1 200 OK\r\nContent-Length: " .. #s .. "\r\nConnection: close\r\n\r\n" .. s)
      and false
  end
  return conn:send("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
end

local function serve(conn)
  while true do
    local method, path = conn:request()
    if not method or not answer(conn, path) then return conn:close() end
  end
end

local function resume(co, ...)
  local ok, err = coroutine.resume(co, ...)
  if not ok then io.stderr:write("http_upstream: ", tostring(err), "\n") end
end

local function accepted(c)
  accepted_n, open_n = accepted_n + 1, open_n + 1
  c:settimeout(0)
  local conn = setmetatable({ c = c, buf = "", id = accepted_n, n = 0 }, Conn)
  by_id[conn.id] = conn
  resume(coroutine.create(serve), conn)
end

local listener = assert(socket.bind("127.0.0.1", 0, 128))
listener:settimeout(0)
local _, port = listener:getsockname()
local f = assert(io.open(portfile .. ".tmp", "w"))
f:write(port, "\n")
f:close()
assert(os.rename(portfile .. ".tmp", portfile))

local started = socket.gettime()
loop.run({ [listener] = true }, accepted, function() return socket.gettime() - started > 600 end,
  "http_upstream")
