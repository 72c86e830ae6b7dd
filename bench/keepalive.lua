-- Sends N keep-alive GET requests on one connection, 16 per write, and
-- waits for every response (counted by status line). For bench/callgrind.
--   lua5.4 bench/keepalive.lua PORT N [PATH]
local socket = require "socket"
local port, n, path = tonumber(arg[1]), tonumber(arg[2]), arg[3] or "/hello"
local c = assert(socket.connect("127.0.0.1", port))
local req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"):format(path)
local sent, got, pending = 0, 0, ""
while got < n do
  local k = math.min(16, n - sent)
  c:settimeout(30)
  assert(c:send(req:rep(k)))
  sent = sent + k
  c:settimeout(0)
  while got < sent do
    assert(socket.select({ c }, nil, 30)[1], "no response within 30 s")
    local data, err, partial = c:receive(65536)
    data = data or partial
    if err == "closed" then error("server closed the connection") end
    pending = pending .. data
    local last = 0
    for e in pending:gmatch("HTTP/1%.1 %d%d%d()") do got, last = got + 1, e end
    pending = pending:sub(last):sub(-11)   -- keep what may start a status line
  end
end
c:close()
print(got)
