-- The event loop the two spec upstreams (spec/upstream.lua for the cosocket
-- specs, spec/http_upstream.lua for the HTTP client's) run on: LuaSocket
-- sockets served each in a coroutine under one socket.select loop, with
-- waits for reading, writing and time, and a connection type with the reads
-- and writes both need. Loaded from the script's own directory:
--   local loop = dofile(arg[0]:match("^(.*/)") .. "upstream_loop.lua")
local socket = require "socket"

local loop = { readers = {}, writers = {}, sleepers = {} }

function loop.wait_read(c)
  loop.readers[c] = coroutine.running()
  coroutine.yield()
end

function loop.wait_write(c)
  loop.writers[c] = coroutine.running()
  coroutine.yield()
end

function loop.sleep(sec)
  local s = loop.sleepers
  s[#s + 1] = { at = socket.gettime() + sec, co = coroutine.running() }
  coroutine.yield()
end

local Conn = {}
Conn.__index = Conn
loop.Conn = Conn

-- Reads what is there into self.buf: true, or false once the peer is gone.
function Conn:fill()
  while true do
    local data, err, partial = self.c:receive(65536)
    local got = data or partial
    if got and #got > 0 then
      self.buf = self.buf .. got
      return true
    end
    if err ~= "timeout" then return false end
    loop.wait_read(self.c)
  end
end

-- Writes all of data: true, or false once the peer is gone.
function Conn:send(data)
  local i = 1
  while i <= #data do
    local last, err, partial = self.c:send(data, i)
    if last then
      i = last + 1
    elseif err == "timeout" then
      i = partial + 1
      loop.wait_write(self.c)
    else
      return false
    end
  end
  return true
end

local function resume(co, name)
  local ok, err = coroutine.resume(co)
  if not ok then io.stderr:write(name, ": ", tostring(err), "\n") end
end

-- Serves until stop() says so: `listeners` is a set of listening sockets,
-- accept(sock) is called for each new connection. `name` prefixes errors.
function loop.run(listeners, accept, stop, name)
  while not stop() do
    local rset, wset = {}, {}
    for l in pairs(listeners) do rset[#rset + 1] = l end
    for c in pairs(loop.readers) do rset[#rset + 1] = c end
    for c in pairs(loop.writers) do wset[#wset + 1] = c end
    local timeout = 1
    local now = socket.gettime()
    for _, s in ipairs(loop.sleepers) do timeout = math.max(0, math.min(timeout, s.at - now)) end
    local r, w = socket.select(rset, wset, timeout)
    for _, c in ipairs(r) do
      if listeners[c] then
        local a = c:accept()
        if a then accept(a) end
      elseif loop.readers[c] then
        local co = loop.readers[c]
        loop.readers[c] = nil
        resume(co, name)
      end
    end
    for _, c in ipairs(w) do
      local co = loop.writers[c]
      if co then
        loop.writers[c] = nil
        resume(co, name)
      end
    end
    now = socket.gettime()
    local due, keep = {}, {}
    for _, s in ipairs(loop.sleepers) do
      if s.at <= now then due[#due + 1] = s else keep[#keep + 1] = s end
    end
    loop.sleepers = keep
    for _, s in ipairs(due) do resume(s.co, name) end
  end
end

return loop
