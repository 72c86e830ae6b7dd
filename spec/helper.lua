-- Shared helpers for the specs: start and stop a real moonring process on a
-- free port, talk to it over raw LuaSocket connections, parse what comes back,
-- and write throw-away fixture apps. Everything a spec creates lives under one
-- temporary directory per helper instance, removed when busted exits (set
-- MOONRING_SPEC_KEEP=1 to keep it, e.g. to read server logs after a failure).
--
-- Environment:
--   MOONRING_BIN        binary to test (default build/moonring)
--   MOONRING_SANITIZED  set (non-empty, not "0") for the ASan/UBSan build:
--                       time bounds are relaxed by helper.slow.
local socket = require "socket"

local helper = {}

helper.bin = os.getenv("MOONRING_BIN") or "build/moonring"
local sanitized_env = os.getenv("MOONRING_SANITIZED")
helper.sanitized = sanitized_env ~= nil and sanitized_env ~= "" and sanitized_env ~= "0"
-- Factor applied to time bounds: sanitizer builds run several times slower.
helper.slow = helper.sanitized and 2 or 1
helper.host = "127.0.0.1"

-- Lines a sanitizer prints when it finds something; any of them fails a spec.
local SANITIZER_PATTERNS = {
  "ERROR: AddressSanitizer",
  "ERROR: LeakSanitizer",
  "LeakSanitizer",
  "runtime error:",
}

---------------------------------------------------------------------------
-- Small process / file utilities
---------------------------------------------------------------------------

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
helper.shell_quote = q

function helper.now()
  return socket.gettime()
end

function helper.sleep(sec)
  socket.sleep(sec)
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
helper.read_file = read_file

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function write_file(path, text)
  os.execute("mkdir -p " .. q(dirname(path)))
  local f = assert(io.open(path, "wb"))
  assert(f:write(text))
  f:close()
end
helper.write_file = write_file

-- Replaces `path` the way many editors save: writes a hidden temporary file
-- next to it (a dot file: not a route, ignored by the server) and renames it
-- over `path`, so the file is replaced at once by a new inode.
function helper.replace_file(path, text)
  local tmp = dirname(path) .. "/." .. path:match("[^/]*$") .. ".tmp-save"
  write_file(tmp, text)
  assert(os.rename(tmp, path))
end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local s = p:read("a")
  p:close()
  return s
end

-- One temporary root per helper instance (busted insulates spec files, so
-- each file gets its own instance); removed by the sentinel below.
local root = capture("mktemp -d \"${TMPDIR:-/tmp}/moonring-spec.XXXXXX\""):gsub("%s+$", "")
assert(root ~= "" and root:sub(1, 1) == "/", "mktemp failed")
helper.tmp_root = root

local counter = 0
local function new_dir(kind)
  counter = counter + 1
  local path = string.format("%s/%s-%d", root, kind, counter)
  assert(os.execute("mkdir -p " .. q(path)))
  return path
end
helper.tmpdir = new_dir

local live_servers = {}

-- When busted exits (os.exit(code, true) closes the state) or this helper
-- instance is collected: kill anything still running, drop the temp files.
local sentinel = setmetatable({}, {
  __gc = function()
    for s in pairs(live_servers) do
      if not s:exit_status() then
        os.execute("kill -KILL " .. s.pid .. " 2>/dev/null")
      end
    end
    local keep = os.getenv("MOONRING_SPEC_KEEP")
    if not (keep and keep ~= "" and keep ~= "0") then
      os.execute("rm -rf " .. q(root))
    end
  end,
})
helper._sentinel = sentinel

---------------------------------------------------------------------------
-- Fixture apps
---------------------------------------------------------------------------

-- Writes `files` (relative path -> contents) into a fresh temp directory and
-- returns its path. Subdirectories are created as needed.
function helper.app(files)
  local dir = new_dir("app")
  for name, text in pairs(files) do
    write_file(dir .. "/" .. name, text)
  end
  return dir
end

function helper.remove(path)
  assert(path:sub(1, #root) == root, "refusing to remove a path outside the spec temp dir")
  os.execute("rm -rf " .. q(path))
end

-- Lua source of a `dump(value)` function, for fixture handlers that report
-- what they saw: the result is a Lua expression that helper.undump() loads.
helper.DUMP = [==[
local function dump(v, seen)
  local t = type(v)
  if t == "string" or t == "number" then return string.format("%q", v)
  elseif t == "boolean" or t == "nil" then return tostring(v)
  elseif t == "table" then
    seen = seen or {}
    if seen[v] then return '"<cycle>"' end
    seen[v] = true
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b)
      if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then return a < b end
      return type(a) < type(b)
    end)
    local out = {}
    for _, k in ipairs(keys) do
      out[#out + 1] = "[" .. dump(k, seen) .. "]=" .. dump(v[k], seen)
    end
    seen[v] = nil
    return "{" .. table.concat(out, ",") .. "}"
  else
    return string.format("%q", "<" .. t .. ">")
  end
end
]==]

-- The /state route of fixture apps: dumps the module table in
-- _lib/state.lua (which the app's handlers record into) for helper.state.
helper.STATE_ROUTE = helper.DUMP .. [[
local state = require "_lib.state"
return function(req) return { status = 200, body = dump(state) } end
]]

function helper.undump(text)
  local f, err = load("return " .. text, "=dump", "t", {})
  if not f then error("cannot load dump: " .. err .. "\n" .. tostring(text), 2) end
  return f()
end

---------------------------------------------------------------------------
-- Server processes
---------------------------------------------------------------------------

local Server = {}
Server.__index = Server

function Server:stderr_text()
  return read_file(self.stderr_path) or ""
end

function Server:stdout_text()
  return read_file(self.stdout_path) or ""
end

-- Exit status (number, 128+N for death by signal N) once the process ended.
function Server:exit_status()
  if self.status then return self.status end
  local s = read_file(self.status_path)
  if s and s:match("^%d+\n$") then
    self.status = tonumber(s)
    return self.status
  end
  return nil
end

function Server:wait(timeout)
  local deadline = helper.now() + (timeout or 5)
  repeat
    local st = self:exit_status()
    if st then return st end
    socket.sleep(0.01)
  until helper.now() > deadline
  return self:exit_status()
end

function Server:signal(sig)
  if self:exit_status() then return false end
  self.signalled = true
  return os.execute("kill -" .. sig .. " " .. self.pid .. " 2>/dev/null") == true
end

-- Occurrences of the plain text `needle` in the server's stderr.
function Server:count_stderr(needle)
  return helper.count(self:stderr_text(), needle)
end

-- Waits until the plain text `needle` occurs at least `n` times in the
-- server's stderr. Returns the count reached (falsy if fewer than n).
function Server:wait_stderr_count(needle, n, timeout)
  local c = helper.eventually(function()
    local k = self:count_stderr(needle)
    return k >= n and k
  end, timeout)
  return c or false, self:count_stderr(needle)
end

-- Waits until `pattern` (Lua pattern) appears in the server's stderr.
function Server:wait_stderr(pattern, timeout)
  local deadline = helper.now() + (timeout or 2 * helper.slow)
  repeat
    local text = self:stderr_text()
    if text:find(pattern) then return text end
    socket.sleep(0.02)
  until helper.now() > deadline
  return nil, self:stderr_text()
end

local function tail(text, n)
  n = n or 4000
  if #text > n then return "...\n" .. text:sub(-n) end
  return text
end

-- Fails when a sanitizer report is in `text`.
function helper.check_sanitizer(text, what)
  for _, pat in ipairs(SANITIZER_PATTERNS) do
    local at = text:find(pat, 1, true)
    if at then
      error(string.format("sanitizer report in %s:\n%s", what or "stderr",
        text:sub(math.max(1, at - 200), at + 6000)), 0)
    end
  end
end

-- SIGTERM, bounded wait, SIGKILL if needed. Returns the exit status. Fails the
-- spec if the process died on its own before stop() (a crash) or if a
-- sanitizer printed a report.
function Server:stop(timeout)
  if self.stopped then return self.status end
  self.stopped = true
  live_servers[self] = nil
  local died_early = self:exit_status()
  local status = died_early
  if not status then
    self:signal("TERM")
    status = self:wait(timeout or 5 * helper.slow)
    if not status then
      self.killed = true
      os.execute("kill -KILL " .. self.pid .. " 2>/dev/null")
      status = self:wait(2)
    end
  end
  local text = self:stderr_text()
  helper.check_sanitizer(text, "server stderr (" .. self.stderr_path .. ")")
  if died_early and not self.signalled and not self.expect_exit then
    error(string.format("server exited unexpectedly with status %s; stderr:\n%s",
      tostring(died_early), tail(text)), 0)
  end
  return status
end

-- Starts $MOONRING_BIN --port 0 [opts.args...] [opts.app] and waits for its
-- `listening on http://HOST:PORT` line. opts.env: extra environment (table).
-- opts.no_wait: return as soon as the process runs (its pid is known), before
-- that line; server:wait_listening() waits for it later.
function helper.start(opts)
  opts = opts or {}
  local dir = new_dir("server")
  local self = setmetatable({
    app = opts.app,
    dir = dir,
    stdout_path = dir .. "/stdout",
    stderr_path = dir .. "/stderr",
    pid_path = dir .. "/pid",
    status_path = dir .. "/status",
  }, Server)
  local argv = { q(helper.bin), "--port", "0" }
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = q(a) end
  if opts.app then argv[#argv + 1] = q(opts.app) end
  local env = ""
  for k, v in pairs(opts.env or {}) do env = env .. k .. "=" .. q(v) .. " " end
  -- A background group starts the server, records its pid, waits for it and
  -- records its exit status; `$!` is the server itself (sh execs it).
  local script = string.format(
    "{ %s%s >%s 2>%s </dev/null & p=$!; echo $p >%s; wait $p; echo $? >%s.tmp; mv %s.tmp %s; } >/dev/null 2>&1 &",
    env, table.concat(argv, " "), q(self.stdout_path), q(self.stderr_path),
    q(self.pid_path), q(self.status_path), q(self.status_path), q(self.status_path))
  assert(os.execute(script))

  local deadline = helper.now() + (opts.start_timeout or 10 * helper.slow)
  repeat
    local p = read_file(self.pid_path)
    if p and p:match("^%d+\n$") then self.pid = tonumber(p) break end
    socket.sleep(0.005)
  until helper.now() > deadline
  assert(self.pid, "server did not start (no pid)")
  live_servers[self] = true
  self.argv_text = table.concat(argv, " ")
  self.start_deadline = deadline
  if opts.no_wait then return self end
  local ok, err = self:wait_listening()
  if not ok then error(err, 2) end
  return self
end

-- Waits for the `listening on` line (until the start deadline, or `timeout`
-- seconds from now) and sets server.host, .port and .url. Returns true, or
-- false and an error message once the process has been killed (it exited, or
-- it did not print the line in time).
function Server:wait_listening(timeout)
  local deadline = timeout and (helper.now() + timeout) or self.start_deadline
  while true do
    local out = self:stdout_text()
    local host, port = out:match("listening on http://([^%s:]+):(%d+)")
    if port then
      self.host, self.port = host, tonumber(port)
      self.url = "http://" .. host .. ":" .. port
      return true
    end
    local st = self:exit_status()
    if st or helper.now() > deadline then
      if not st then os.execute("kill -KILL " .. self.pid .. " 2>/dev/null"); self:wait(2) end
      live_servers[self] = nil
      self.stopped = true
      return false, string.format("server %s (argv: %s) did not print its listening line%s\nstdout:\n%s\nstderr:\n%s",
        st and ("exited with status " .. st) or "timed out", self.argv_text,
        "", tail(out), tail(self:stderr_text()))
    end
    socket.sleep(0.01)
  end
end

-- Starts a server, runs fn(server), always stops it (and removes the fixture
-- app written from opts.files), then re-raises fn's error if any.
-- opts.files: fixture app (see helper.app); opts.entry: a file inside it to use
-- as APP instead of the directory. Returns fn's results.
function helper.with_server(opts, fn)
  opts = opts or {}
  local app_dir
  if opts.files then
    app_dir = helper.app(opts.files)
    opts.app = opts.entry and (app_dir .. "/" .. opts.entry) or app_dir
  end
  local ok_start, server = pcall(helper.start, opts)
  if not ok_start then
    if app_dir then helper.remove(app_dir) end
    error(server, 0)
  end
  local res = table.pack(pcall(fn, server))
  helper.close_connections()
  local ok_stop, stop_err = pcall(server.stop, server)
  if app_dir then helper.remove(app_dir) end
  if not res[1] then error(res[2], 0) end
  if not ok_stop then error(stop_err, 0) end
  return table.unpack(res, 2, res.n)
end

-- Runs the binary to completion (for CLI behaviour and load failures):
-- returns { status = exit code, stdout = text, stderr = text }. A binary that
-- keeps running past opts.timeout is killed (status 124 or 137).
function helper.run(args, opts)
  opts = opts or {}
  local dir = new_dir("run")
  local argv = { q(helper.bin) }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = q(a) end
  local timeout = opts.timeout or 5 * helper.slow
  local cmd = string.format("timeout -k 2 %s %s >%s 2>%s </dev/null",
    tostring(timeout), table.concat(argv, " "), q(dir .. "/stdout"), q(dir .. "/stderr"))
  local _, how, code = os.execute(cmd)
  local r = {
    status = how == "exit" and code or (128 + (code or 0)),
    stdout = read_file(dir .. "/stdout") or "",
    stderr = read_file(dir .. "/stderr") or "",
  }
  helper.check_sanitizer(r.stderr, "stderr of " .. table.concat(argv, " "))
  return r
end

---------------------------------------------------------------------------
-- Clients
---------------------------------------------------------------------------

-- opts.rcvbuf: SO_RCVBUF in bytes, set before connecting (so the window
-- the client advertises stays small): a client that reads slowly, or not at
-- all, then makes the server's output back up quickly.
local function connect(port, opts)
  opts = opts or {}
  local c
  if opts.rcvbuf then
    c = assert(socket.tcp4())
    assert(c:setoption("recv-buffer-size", opts.rcvbuf))
  else
    c = assert(socket.tcp())
  end
  c:settimeout(opts.connect_timeout or 5)
  local ok, err = c:connect(opts.host or helper.host, port)
  if not ok then
    c:close()
    return nil, err
  end
  c:setoption("tcp-nodelay", true)
  return c
end

local function send_all(c, bytes)
  local i = 1
  while i <= #bytes do
    local last, err, partial = c:send(bytes, i)
    if not last then
      if err == "timeout" and partial then
        i = partial + 1
      else
        return nil, err
      end
    else
      i = last + 1
    end
  end
  return true
end

-- Reads until the peer closes or `timeout` seconds pass. Returns the data and
-- how it ended: "closed" (EOF or reset) or "timeout".
local function read_until_close(c, timeout)
  local deadline = helper.now() + timeout
  local parts = {}
  local ended, err_text
  while true do
    local left = deadline - helper.now()
    if left <= 0 then ended = "timeout" break end
    c:settimeout(left)
    local data, err, partial = c:receive(8192)
    local got = data or partial
    if got and #got > 0 then parts[#parts + 1] = got end
    if not data then
      if err == "closed" then ended = "closed" break
      elseif err == "timeout" then
        if helper.now() >= deadline then ended = "timeout" break end
      else
        ended, err_text = "closed", err -- e.g. "connection reset by peer"
        break
      end
    end
  end
  return table.concat(parts), ended, err_text
end

-- Sends `bytes` (a string, or an array of strings sent with opts.pause
-- seconds between them) on a fresh connection, then reads until the server
-- closes or opts.timeout (default 5 s) passes. Returns the raw text and an
-- info table { closed = bool, ended = "closed"|"timeout", error = text,
-- send_error = text, elapsed = seconds }.
function helper.raw(port, bytes, opts)
  opts = opts or {}
  local started = helper.now()
  local c = assert(connect(port, opts))
  local info = {}
  local pieces = type(bytes) == "table" and bytes or { bytes }
  for i, piece in ipairs(pieces) do
    local ok, err = send_all(c, piece)
    if not ok then info.send_error = err break end
    if opts.pause and i < #pieces then socket.sleep(opts.pause) end
  end
  local text, ended, err = read_until_close(c, opts.timeout or 5 * helper.slow)
  c:close()
  info.ended, info.closed, info.error = ended, ended == "closed", err
  info.elapsed = helper.now() - started
  return text, info
end

---------------------------------------------------------------------------
-- Response parsing (works on a string or on a live socket)
---------------------------------------------------------------------------

local StringSource = {}
StringSource.__index = StringSource

local function string_source(text)
  return setmetatable({ text = text, pos = 1 }, StringSource)
end

function StringSource:line()
  if self.pos > #self.text then return nil, "closed" end
  local nl = self.text:find("\n", self.pos, true)
  if not nl then return nil, "incomplete line" end
  local line = self.text:sub(self.pos, nl - 1)
  self.pos = nl + 1
  return (line:gsub("\r$", ""))
end

function StringSource:bytes(n)
  local s = self.text:sub(self.pos, self.pos + n - 1)
  self.pos = self.pos + #s
  if #s < n then return nil, "closed", s end
  return s
end

function StringSource:rest()
  local s = self.text:sub(self.pos)
  self.pos = #self.text + 1
  return s
end

function StringSource:at_end()
  return self.pos > #self.text
end

local SocketSource = {}
SocketSource.__index = SocketSource

local function socket_source(c, timeout)
  return setmetatable({ c = c, timeout = timeout }, SocketSource)
end

function SocketSource:line()
  self.c:settimeout(self.timeout)
  local line, err = self.c:receive("*l")  -- strips CR and LF
  return line, err
end

function SocketSource:bytes(n)
  if n == 0 then return "" end
  self.c:settimeout(self.timeout)
  local s, err, partial = self.c:receive(n)
  if not s then return nil, err, partial end
  return s
end

function SocketSource:rest()
  local text, ended = read_until_close(self.c, self.timeout)
  self.ended = ended
  return text
end

-- Parses one response from src. opts.head: the request was HEAD (no body).
-- Returns a response table, or nil and an error message.
local function parse_one(src, opts)
  opts = opts or {}
  local line, err = src:line()
  if not line then return nil, "no status line (" .. tostring(err) .. ")" end
  local proto, status, reason = line:match("^(HTTP/%d%.%d) (%d%d%d) ?(.*)$")
  if not proto then return nil, "bad status line: " .. string.format("%q", line) end
  local res = {
    protocol = proto, status = tonumber(status), reason = reason,
    headers = {}, header_list = {},
  }
  while true do
    local l, e = src:line()
    if not l then return nil, "headers cut short (" .. tostring(e) .. ")" end
    if l == "" then break end
    local name, value = l:match("^([^:%s]+):[ \t]*(.-)[ \t]*$")
    if not name then return nil, "bad header line: " .. string.format("%q", l) end
    name = name:lower()
    res.header_list[#res.header_list + 1] = { name, value }
    if res.headers[name] then
      res.headers[name] = res.headers[name] .. ", " .. value
    else
      res.headers[name] = value
    end
  end
  if res.status < 200 or res.status == 204 or res.status == 304 or opts.head then
    res.body = ""
    return res
  end
  local te = res.headers["transfer-encoding"]
  local cl = res.headers["content-length"]
  if te and te:lower():match("chunked%s*$") then
    local parts = {}
    res.chunks = {}
    while true do
      local size_line, e = src:line()
      if not size_line then return nil, "chunk size missing (" .. tostring(e) .. ")" end
      local hex = size_line:match("^(%x+)")
      if not hex then return nil, "bad chunk size line: " .. string.format("%q", size_line) end
      local n = tonumber(hex, 16)
      if n == 0 then
        repeat
          local t = src:line()
          if t and t ~= "" then
            local tn, tv = t:match("^([^:]+):%s*(.-)%s*$")
            if tn then res.trailers = res.trailers or {}; res.trailers[tn:lower()] = tv end
          end
        until t == nil or t == ""
        break
      end
      local data, e2 = src:bytes(n)
      if not data then return nil, "chunk cut short (" .. tostring(e2) .. ")" end
      parts[#parts + 1] = data
      res.chunks[#res.chunks + 1] = data
      local crlf = src:line()
      if crlf ~= "" then return nil, "missing CRLF after chunk" end
    end
    res.body = table.concat(parts)
    res.chunked = true
  elseif cl then
    local n = tonumber(cl)
    if not n then return nil, "bad content-length: " .. cl end
    local data, e, partial = src:bytes(n)
    if not data then
      res.body = partial or ""
      return nil, "body cut short (" .. tostring(e) .. "): got " .. #res.body .. " of " .. n
    end
    res.body = data
  else
    res.body = src:rest()
    res.close_delimited = true
  end
  return res
end

-- Parses every response in `text` (pipelined responses, 100 Continue interim
-- responses included, in order). opts.methods: the request methods in order,
-- so responses to HEAD are read without a body. Returns the array of responses
-- and, if the text could not be fully parsed, an error message.
function helper.parse(text, opts)
  opts = opts or {}
  local src = string_source(text)
  local out = {}
  local final_index = 0
  while not src:at_end() do
    local method = opts.methods and opts.methods[final_index + 1]
    local res, err = parse_one(src, { head = method == "HEAD" })
    if not res then return out, err end
    out[#out + 1] = res
    if res.status >= 200 then final_index = final_index + 1 end
  end
  return out
end

-- Parses exactly one response out of `text` (the first one). Fails the spec
-- with the raw text if it cannot.
function helper.parse_response(text, opts)
  local res, err = parse_one(string_source(text), opts)
  if not res then
    error("could not parse response: " .. err .. "\nraw:\n" .. string.format("%q", text), 2)
  end
  res.raw = text
  return res
end

-- Headers of a response as an array of values for `name` (lower case).
function helper.header_values(res, name)
  local vals = {}
  for _, h in ipairs(res.header_list) do
    if h[1] == name then vals[#vals + 1] = h[2] end
  end
  return vals
end

---------------------------------------------------------------------------
-- Persistent connections
---------------------------------------------------------------------------

local Conn = {}
Conn.__index = Conn

-- Connections opened by helper.connect and not closed yet: with_server
-- closes them before stopping its server, as a client would, so the server
-- does not linger on them.
local open_conns = setmetatable({}, { __mode = "k" })

local function close_open_conns()
  for conn in pairs(open_conns) do conn:close() end
end
helper.close_connections = close_open_conns

-- A raw connection kept open across requests (keep-alive, 100-continue).
function helper.connect(port, opts)
  opts = opts or {}
  local c = assert(connect(port, opts))
  local conn = setmetatable({ sock = c, timeout = opts.timeout or 5 * helper.slow }, Conn)
  open_conns[conn] = true
  return conn
end

function Conn:send(bytes)
  return send_all(self.sock, bytes)
end

-- Reads one response. opts.head for HEAD requests; opts.timeout per read.
-- Fails the spec if no complete response arrives.
function Conn:response(opts)
  opts = opts or {}
  local src = socket_source(self.sock, opts.timeout or self.timeout)
  local res, err = parse_one(src, opts)
  if not res then error("could not read a response: " .. err, 2) end
  return res
end

-- Like Conn:response but returns nil, err instead of failing.
function Conn:try_response(opts)
  opts = opts or {}
  return parse_one(socket_source(self.sock, opts.timeout or self.timeout), opts)
end

-- Waits up to `timeout` for the server to close the connection. Returns true
-- when it closed with no further bytes; false and the bytes (or "timeout")
-- otherwise.
function Conn:wait_closed(timeout)
  local text, ended = read_until_close(self.sock, timeout or 2 * helper.slow)
  if ended == "closed" and text == "" then return true end
  return false, ended == "closed" and text or ("timeout; got " .. string.format("%q", text))
end

function Conn:close()
  open_conns[self] = nil
  self.sock:close()
end

-- Reads until the server closes or `timeout` passes: returns the bytes, how
-- it ended ("closed" on EOF or reset, "timeout") and the socket error text
-- (e.g. "connection reset by peer").
function Conn:read_until_close(timeout)
  return read_until_close(self.sock, timeout or self.timeout)
end

-- Half-closes the client's side ("send": the server reads EOF; the client
-- can still read).
function Conn:shutdown(how)
  return self.sock:shutdown(how or "send")
end

-- Closes with SO_LINGER 0, so the server sees a reset rather than an EOF.
function Conn:reset()
  self.sock:setoption("linger", { on = true, timeout = 0 })
  self:close()
end

---------------------------------------------------------------------------
-- Requests
---------------------------------------------------------------------------

-- Builds request bytes. opts.headers: map name -> value, or array of
-- {name, value} pairs (for repeats); opts.body: string (Content-Length is
-- added unless a content-length or transfer-encoding header is given);
-- opts.protocol (default HTTP/1.1); opts.close = false to omit
-- Connection: close; opts.host = false to omit Host.
function helper.build_request(port, method, path, opts)
  opts = opts or {}
  local lines = { string.format("%s %s %s", method, path, opts.protocol or "HTTP/1.1") }
  local has = {}
  local function add(name, value)
    has[name:lower()] = true
    lines[#lines + 1] = name .. ": " .. value
  end
  if opts.host ~= false then add("Host", helper.host .. ":" .. tostring(port)) end
  local hs = opts.headers or {}
  if hs[1] then
    for _, h in ipairs(hs) do add(h[1], h[2]) end
  else
    local names = {}
    for k in pairs(hs) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do add(k, hs[k]) end
  end
  if opts.close ~= false and not has["connection"] then add("Connection", "close") end
  if opts.body and not has["content-length"] and not has["transfer-encoding"] then
    add("Content-Length", tostring(#opts.body))
  end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (opts.body or "")
end

-- One request on a fresh connection with Connection: close. Returns the
-- response {status, headers, body, header_list, raw, closed}.
function helper.request(port, method, path, opts)
  opts = opts or {}
  local bytes = helper.build_request(port, method, path, opts)
  local text, info = helper.raw(port, bytes, { timeout = opts.timeout })
  local res, err = parse_one(string_source(text), { head = method == "HEAD" })
  if not res then
    error(string.format("%s %s: could not parse response (%s; connection %s)\nraw: %q",
      method, path, err, info.ended, text), 2)
  end
  res.raw, res.closed, res.elapsed = text, info.closed, info.elapsed
  return res
end

function helper.get(port, path, opts)
  return helper.request(port, "GET", path, opts)
end

-- Encodes a body in chunked transfer coding, one chunk per array element.
function helper.chunked(parts)
  local out = {}
  for _, p in ipairs(parts) do
    if #p > 0 then out[#out + 1] = string.format("%x\r\n%s\r\n", #p, p) end
  end
  out[#out + 1] = "0\r\n\r\n"
  return table.concat(out)
end

-- Asserts the server still serves a fresh client: GET `path` answers 200.
function helper.assert_serves(port, path)
  local res = helper.get(port, path or "/")
  if res.status ~= 200 then
    error(string.format("expected a fresh GET %s to answer 200, got %d\n%s",
      path or "/", res.status, res.raw), 2)
  end
  return res
end

-- The state a fixture app exposes on /state (helper.STATE_ROUTE).
function helper.state(server)
  local res = helper.get(server.port, "/state")
  if res.status ~= 200 then error("GET /state answered " .. res.status .. "\n" .. res.raw, 2) end
  return helper.undump(res.body)
end

-- Polls fn() until it returns a true value or `timeout` seconds pass;
-- returns that value (or fn()'s last answer).
function helper.eventually(fn, timeout)
  local deadline = helper.now() + (timeout or 2 * helper.slow)
  repeat
    local v = fn()
    if v then return v end
    helper.sleep(0.03)
  until helper.now() > deadline
  return fn()
end

-- Polls /state until pred(state) holds or `timeout` seconds pass. Returns the
-- last state and whether pred held.
function helper.wait_state(server, pred, timeout)
  local st
  local ok = helper.eventually(function()
    st = helper.state(server)
    return pred(st)
  end, timeout)
  return st, ok and true or false
end

-- Counts plain-text occurrences of `needle` in `text`.
function helper.count(text, needle)
  local n, pos = 0, 1
  while true do
    local s, e = text:find(needle, pos, true)
    if not s then return n end
    n, pos = n + 1, e + 1
  end
end

---------------------------------------------------------------------------
-- Services: a real redis-server per spec
---------------------------------------------------------------------------

-- A loopback TCP port nothing listens on (the kernel's pick, released).
function helper.free_port()
  local s = assert(socket.bind(helper.host, 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

helper.redis_bin = "/usr/bin/redis-server"

local live_redis = {}
helper._redis_sentinel = setmetatable({}, {
  __gc = function()
    for r in pairs(live_redis) do os.execute("kill -KILL " .. r.pid .. " 2>/dev/null") end
  end,
})

local Redis = {}
Redis.__index = Redis

-- One command over a fresh LuaSocket connection: the reply (status and bulk
-- as strings, integers as numbers, arrays as tables, nil bulk as nil), or
-- nil and the error text of an error reply. For specs to look at Redis
-- directly, beside the server under test.
function Redis:cmd(...)
  local c = assert(connect(self.port, { connect_timeout = 2 }))
  c:settimeout(5 * helper.slow)
  local out = {}
  local function encode(args)
    out[#out + 1] = "*" .. args.n .. "\r\n"
    for i = 1, args.n do
      local s = tostring(args[i])
      out[#out + 1] = "$" .. #s .. "\r\n" .. s .. "\r\n"
    end
  end
  if self.password then encode(table.pack("AUTH", self.password)) end
  encode(table.pack(...))
  assert(send_all(c, table.concat(out)))
  local function read()
    local line = assert(c:receive("*l"))
    local kind, rest = line:sub(1, 1), line:sub(2)
    if kind == "+" then return rest
    elseif kind == "-" then return nil, rest
    elseif kind == ":" then return tonumber(rest)
    elseif kind == "$" then
      local n = tonumber(rest)
      if n < 0 then return nil end
      return assert(c:receive(n + 2)):sub(1, n)
    elseif kind == "*" then
      local arr = {}
      for i = 1, tonumber(rest) do arr[i] = read() end
      return arr
    end
    error("bad reply from redis: " .. line)
  end
  if self.password then assert(read()) end
  local v, err = read()
  c:close()
  return v, err
end

function Redis:log_text()
  return read_file(self.log_path) or ""
end

function Redis:running()
  local st = read_file(self.status_path)
  return not (st and st:match("^%d+\n$"))
end

-- Stops the server (SIGTERM, then SIGKILL after 5 s). r.stop() or r:stop().
function Redis:stop_server()
  if self.stopped then return end
  self.stopped = true
  live_redis[self] = nil
  os.execute("kill -TERM " .. self.pid .. " 2>/dev/null")
  local deadline = helper.now() + 5 * helper.slow
  while self:running() and helper.now() < deadline do socket.sleep(0.01) end
  if self:running() then os.execute("kill -KILL " .. self.pid .. " 2>/dev/null") end
end

local function spawn_redis(dir, port, args)
  local r = setmetatable({
    port = port, dir = dir, log_path = dir .. "/log",
    pid_path = dir .. "/pid", status_path = dir .. "/status",
  }, Redis)
  local argv = { q(helper.redis_bin), "--port", tostring(port), "--bind", helper.host,
                 "--save", "''", "--appendonly", "no", "--daemonize", "no", "--dir", q(dir) }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = q(a) end
  assert(os.execute(string.format(
    "{ %s >%s 2>&1 </dev/null & p=$!; echo $p >%s; wait $p; echo $? >%s.tmp; mv %s.tmp %s; } >/dev/null 2>&1 &",
    table.concat(argv, " "), q(r.log_path), q(r.pid_path), q(r.status_path), q(r.status_path),
    q(r.status_path))))
  local deadline = helper.now() + 5 * helper.slow
  repeat
    local p = read_file(r.pid_path)
    if p and p:match("^%d+\n$") then r.pid = tonumber(p) break end
    socket.sleep(0.005)
  until helper.now() > deadline
  assert(r.pid, "redis-server did not start (no pid)")
  live_redis[r] = true
  r.stop = function() r:stop_server() end
  return r
end

-- Waits until the server answers PING; true, or false once it exited.
local function redis_ready(r)
  local deadline = helper.now() + 10 * helper.slow
  while helper.now() < deadline do
    if not r:running() then return false end
    local ok, v = pcall(r.cmd, r, "PING")
    if ok and v == "PONG" then return true end
    socket.sleep(0.02)
  end
  return false
end

-- Starts /usr/bin/redis-server on a free loopback port, in a temp dir, with
-- no persistence, in the foreground of a background shell (as helper.start
-- does), and waits until it answers PING. opts.args: extra arguments
-- (e.g. { "--maxclients", "20" }); opts.password: started with
-- --requirepass, which r:cmd then sends first. Returns { port =, pid =, stop = fn,
-- cmd = fn(self, ...) }; stop it by pid with r.stop() in a finally/teardown.
function helper.redis_start(opts)
  opts = opts or {}
  local f = io.open(helper.redis_bin, "rb")
  assert(f, helper.redis_bin .. " is missing: run scripts/setup.sh (it installs Debian's redis-server)")
  f:close()
  local last_log
  for _ = 1, 3 do              -- the free port may be taken before Redis binds it
    local args = { table.unpack(opts.args or {}) }
    if opts.password then
      args[#args + 1] = "--requirepass"
      args[#args + 1] = opts.password
    end
    local r = spawn_redis(new_dir("redis"), helper.free_port(), args)
    r.password = opts.password
    if redis_ready(r) then return r end
    last_log = r:log_text()
    r:stop()
  end
  error("redis-server did not start:\n" .. tostring(last_log), 2)
end

return helper
