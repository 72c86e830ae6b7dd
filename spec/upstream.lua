-- A small upstream for spec/socket_spec.lua: a LuaSocket server on loopback
-- (and, when given a path, on a unix socket) that serves many connections at
-- once, each in a coroutine, under one socket.select loop. Run as
--   lua5.4 spec/upstream.lua PORTFILE LOGFILE [UNIXPATH]
-- It writes its TCP port to PORTFILE once it listens (and exits once that
-- file is gone, or after ten minutes), and one line per event
-- to LOGFILE ("open ID", "eof ID": the peer closed, "close ID": we closed),
-- so a spec can tell what happened to a given connection (ask it "ID").
--
-- Each connection reads commands, one a line, and answers:
--   PING              "PONG\n"
--   ECHO text         "text\n"
--   ID                "ID\n" (this connection's number)
--   SLEEP ms text     waits ms, then "text\n" (other connections go on)
--   HEX hex           the bytes the hex digits spell
--   HEXCLOSE hex      the same, then closes
--   PIECES ms hex...  each hex piece in turn, waiting ms between them
--   BLOB n            n bytes ("0123456789abcdef" repeated)
--   BLOBCLOSE n       the same, then closes
--   SILENT            never answers; reads and drops until the peer closes
--   NOREAD            "OK\n", then stops reading (for 30 s), then closes
--   CLOSEAFTER ms     "OK\n", then closes after ms
--   SINK n ms         reads n more bytes, sleeping ms between reads of at
--                     most 64 KiB, then "GOT n first16 last16\n"
--   CLOSE             closes at once
local socket = require "socket"
local portfile, logfile, unixpath = ...

local log = assert(io.open(logfile, "a"))
log:setvbuf("line")
local function event(what, id) log:write(what, " ", id, "\n") end

local loop = dofile(arg[0]:match("^(.*/)") .. "upstream_loop.lua")
local wait_read, sleep, Conn = loop.wait_read, loop.sleep, loop.Conn

function Conn:line()
  while true do
    local nl = self.buf:find("\n", 1, true)
    if nl then
      local line = self.buf:sub(1, nl - 1):gsub("\r$", "")
      self.buf = self.buf:sub(nl + 1)
      return line
    end
    if not self:fill() then return nil end
  end
end

function Conn:close()
  if self.closed then return end
  self.closed = true
  event("close", self.id)
  self.c:close()
end

local function blob(n)
  local unit = "0123456789abcdef"
  return unit:rep(n // #unit) .. unit:sub(1, n % #unit)
end

local function fromhex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

-- Reads n bytes (what is buffered first), sleeping between reads.
local function sink(conn, n, ms)
  local got, first, last = 0, "", ""
  local function take(s)
    if #first < 16 then first = first .. s:sub(1, 16 - #first) end
    last = (last .. s):sub(-16)
    got = got + #s
  end
  local pre = conn.buf:sub(1, n)
  conn.buf = conn.buf:sub(#pre + 1)
  take(pre)
  while got < n do
    if ms > 0 then sleep(ms / 1000) end
    local data, err, partial = conn.c:receive(math.min(65536, n - got))
    local s = data or partial
    if s and #s > 0 then take(s)
    elseif err ~= "timeout" then return false
    else wait_read(conn.c) end
  end
  return conn:send(string.format("GOT %d %s %s\n", got, first, last))
end

local function serve(conn)
  while true do
    local line = conn:line()
    if not line then
      event("eof", conn.id)
      return conn:close()
    end
    local cmd, arg = line:match("^(%S+)%s*(.*)$")
    local ok = true
    if cmd == "PING" then ok = conn:send("PONG\n")
    elseif cmd == "ECHO" then ok = conn:send(arg .. "\n")
    elseif cmd == "ID" then ok = conn:send(conn.id .. "\n")
    elseif cmd == "SLEEP" then
      local ms, text = arg:match("^(%d+)%s*(.*)$")
      sleep(tonumber(ms) / 1000)
      ok = conn:send(text .. "\n")
    elseif cmd == "HEX" then ok = conn:send(fromhex(arg))
    elseif cmd == "HEXCLOSE" then
      conn:send(fromhex(arg))
      return conn:close()
    elseif cmd == "PIECES" then
      local ms, rest = arg:match("^(%d+)%s*(.*)$")
      local i = 0
      for hex in rest:gmatch("%x+") do
        i = i + 1
        if i > 1 then sleep(tonumber(ms) / 1000) end
        ok = ok and conn:send(fromhex(hex))
      end
    elseif cmd == "BLOB" then ok = conn:send(blob(tonumber(arg)))
    elseif cmd == "BLOBCLOSE" then
      conn:send(blob(tonumber(arg)))
      return conn:close()
    elseif cmd == "SILENT" then
      conn.buf = ""
      while conn:fill() do conn.buf = "" end
      event("eof", conn.id)
      return conn:close()
    elseif cmd == "NOREAD" then
      conn:send("OK\n")
      sleep(30)
      return conn:close()
    elseif cmd == "CLOSEAFTER" then
      conn:send("OK\n")
      sleep(tonumber(arg) / 1000)
      return conn:close()
    elseif cmd == "SINK" then
      local n, ms = arg:match("^(%d+)%s+(%d+)$")
      ok = sink(conn, tonumber(n), tonumber(ms))
    elseif cmd == "CLOSE" then
      return conn:close()
    else
      ok = conn:send("ERR unknown command " .. tostring(cmd) .. "\n")
    end
    if not ok then
      event("eof", conn.id)
      return conn:close()
    end
  end
end

local nextid = 0
local function accepted(c)
  nextid = nextid + 1
  c:settimeout(0)
  local conn = setmetatable({ c = c, buf = "", id = nextid }, Conn)
  event("open", conn.id)
  local co = coroutine.create(serve)
  local ok, err = coroutine.resume(co, conn)
  if not ok then io.stderr:write("upstream: ", tostring(err), "\n") end
end

local listeners = {}
-- A small receive buffer (inherited by accepted sockets, and no autotuning):
-- a client sending much to a slow reader here then waits for it at once.
local tcp = assert(socket.tcp4())
assert(tcp:setoption("reuseaddr", true))
assert(tcp:setoption("recv-buffer-size", 65536))
assert(tcp:bind("127.0.0.1", 0))
assert(tcp:listen(128))
tcp:settimeout(0)
listeners[tcp] = true
if unixpath then
  local unix = require "socket.unix"
  local u = assert(unix.stream())
  assert(u:bind(unixpath))
  assert(u:listen(64))
  u:settimeout(0)
  listeners[u] = true
end

local _, port = tcp:getsockname()
local f = assert(io.open(portfile .. ".tmp", "w"))
f:write(port, "\n")
f:close()
assert(os.rename(portfile .. ".tmp", portfile))

-- Bounded: it exits when the spec's temp dir is gone (the spec ended without
-- stopping it) or after ten minutes, whichever comes first.
local started = socket.gettime()
local function orphaned()
  local pf = io.open(portfile, "r")
  if pf then pf:close() end
  return not pf or socket.gettime() - started > 600
end

loop.run(listeners, accepted, orphaned, "upstream")
