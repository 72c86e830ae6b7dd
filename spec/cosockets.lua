-- The harness of the cosocket specs (socket_spec, socket_edge_spec,
-- dns_spec): an upstream process (spec/upstream.lua, a LuaSocket server the
-- spec starts and stops by pid; it logs "open ID", "eof ID" and "close ID"
-- per connection, so a spec sees what moonring did to each), and a fixture
-- app whose /run route runs a scenario: Lua code POSTed to it, run in the
-- handler's task, answered as dump(table.pack(pcall(code))).
local helper = require "helper"
local socket = require "socket"
local assert = require "luassert"

local M = {}

local HERE = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
local UPSTREAM_SCRIPT = HERE .. "/upstream.lua"
local q = helper.shell_quote

---------------------------------------------------------------------------
-- The upstream process
---------------------------------------------------------------------------

local Upstream = {}
Upstream.__index = Upstream

-- unix_path: where its unix socket listens (default: in its own temp dir).
local function start_upstream(unix_path)
  local dir = helper.tmpdir("upstream")
  local up = setmetatable({
    dir = dir, port_path = dir .. "/port", log_path = dir .. "/log",
    unix = unix_path or (dir .. "/up.sock"), pid_path = dir .. "/pid", err_path = dir .. "/stderr",
  }, Upstream)
  assert(os.execute(string.format("{ lua5.4 %s %s %s %s >%s 2>&1 </dev/null & echo $! >%s; } >/dev/null 2>&1",
    q(UPSTREAM_SCRIPT), q(up.port_path), q(up.log_path), q(up.unix), q(up.err_path), q(up.pid_path))))
  local deadline = helper.now() + 5
  repeat
    local p = helper.read_file(up.port_path)
    if p and p:match("^%d+\n$") then up.port = tonumber(p) break end
    helper.sleep(0.01)
  until helper.now() > deadline
  up.pid = tonumber(helper.read_file(up.pid_path) or "")
  assert(up.port, "upstream did not start: " .. tostring(helper.read_file(up.err_path)))
  return up
end

function Upstream:stop()
  if self.pid then os.execute("kill -TERM " .. self.pid .. " 2>/dev/null") end
  self.pid = nil
end

-- What went wrong inside the upstream itself (its own bugs), if anything.
function Upstream:errors()
  return helper.read_file(self.err_path) or ""
end

function Upstream:saw(what, id)
  local log = helper.read_file(self.log_path) or ""
  return ("\n" .. log):find("\n" .. what .. " " .. tostring(id) .. "\n", 1, true) ~= nil
end

-- Waits until the upstream logged `what` (open, eof, close) for connection id.
function Upstream:wait(what, id, timeout)
  return helper.eventually(function() return self:saw(what, id) end, timeout or 2 * helper.slow)
end

-- The connection is over on the upstream's side (the peer closed it).
function Upstream:wait_gone(id, timeout)
  return self:wait("eof", id, timeout)
end

---------------------------------------------------------------------------
-- The app: /run executes a scenario; / and /hello answer at once
---------------------------------------------------------------------------

local function app_files(up)
  return {
    ["_state.lua"] = "return {}\n",
    ["index.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
    ["hello.lua"] = [[return function(req) return { status = 200, body = "hello\n" } end]],
    ["state.lua"] = helper.DUMP .. [[
local state = require "_state"
return function(req) return { status = 200, body = dump(state) } end
]],
    ["run.lua"] = "local moonring = require \"moonring\"\n" .. helper.DUMP
      .. string.format("local UP, UNIX = %d, %q\n", up.port, up.unix) .. [[
local state = require "_state"
local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end
-- a socket connected to the upstream (opts: connect's), 5 s timeouts
local function upsock(opts)
  local s = moonring.tcp()
  s:settimeout(5000)
  assert(s:connect("127.0.0.1", UP, opts))
  return s
end
-- n bytes of "0123456789abcdef" (n a multiple of 64 KiB), made quickly
local function big(n) return ("0123456789abcdef"):rep(4096):rep(n // 65536) end
-- one command, one line back
local function cmd(s, line)
  assert(s:send(line .. "\n"))
  return s:receive()
end
return function(req)
  local code = req.body and req.body:read("a") or ""
  local env = setmetatable({ moonring = moonring, UP = UP, UNIX = UNIX, state = state, hex = hex,
    upsock = upsock, cmd = cmd, big = big, req = req }, { __index = _G })
  local f, err = load(code, "=scenario", "t", env)
  if not f then return { status = 500, body = err } end
  return { status = 200, body = dump(table.pack(pcall(f))) }
end
]],
  }
end

local function check_run(res)
  assert.are.equal(200, res.status, res.body)
  return helper.undump(res.body)
end

-- Runs `code` in a handler: what it returned (table.pack'd, without the
-- pcall flag); fails the spec if it raised.
local function run(server, code)
  local res = helper.request(server.port, "POST", "/run", { body = code, timeout = 20 * helper.slow })
  local r = check_run(res)
  if not r[1] then error("scenario raised: " .. tostring(r[2]), 2) end
  return table.pack(table.unpack(r, 2, r.n))
end

-- Runs `code` expecting it to raise: the error message.
local function run_raises(server, code)
  local r = check_run(helper.request(server.port, "POST", "/run", { body = code }))
  assert.is_false(r[1], "expected the scenario to raise; it returned " .. tostring(r[2]))
  return tostring(r[2])
end

-- Starts `code` on a connection of its own and returns that connection; its
-- answer is read later with finish().
local function start(server, code)
  local c = helper.connect(server.port, { timeout = 20 * helper.slow })
  c:send(helper.build_request(server.port, "POST", "/run", { body = code }))
  return c
end

local function finish(c)
  local res = c:response()
  c:close()
  local r = check_run(res)
  if not r[1] then error("scenario raised: " .. tostring(r[2]), 2) end
  return table.pack(table.unpack(r, 2, r.n))
end

-- A GET of /hello on a fresh connection: the response and its time.
local function timed_hello(server)
  local t0 = helper.now()
  local res = helper.get(server.port, "/hello")
  return res, helper.now() - t0
end

local BLOB = ("0123456789abcdef"):rep(4096)      -- what "BLOB n" sends, cut to n

-- A loopback port whose listener never accepts and whose accept queue is
-- full, so the kernel drops new SYNs: a connect there waits for its timeout.
-- Returns the port and a function that closes it all (for finally()).
local function full_listener()
  local l = assert(socket.tcp())
  assert(l:bind("127.0.0.1", 0))
  assert(l:listen(0))
  local _, port = l:getsockname()
  local fillers = {}
  for _ = 1, 8 do
    local f = socket.tcp()
    f:settimeout(0.2)
    local ok = f:connect("127.0.0.1", port)
    fillers[#fillers + 1] = f
    if not ok then break end
  end
  return port, function()
    for _, f in ipairs(fillers) do f:close() end
    l:close()
  end
end


M.Upstream = Upstream
M.start_upstream = start_upstream
M.app_files = app_files
M.run = run
M.run_raises = run_raises
M.start = start
M.finish = finish
M.timed_hello = timed_hello
M.full_listener = full_listener
M.BLOB = BLOB

-- The usual pair for a describe block: an upstream, and a server on the
-- fixture app. stop_fixture stops both and fails on an unclean exit or on
-- errors inside the upstream itself.
function M.start_fixture()
  local up = start_upstream()
  return up, helper.start { app = helper.app(app_files(up)) }
end

function M.stop_fixture(up, server)
  helper.close_connections()
  if up then up:stop() end
  if server then assert.are.equal(0, server:stop()) end
  if up then assert.are.equal("", up:errors(), "the upstream itself failed") end
end

return M
