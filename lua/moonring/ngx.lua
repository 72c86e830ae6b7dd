-- require "moonring.ngx": a small `ngx` shim so pure-Lua OpenResty drivers
-- (lua-resty-redis and the like) run unchanged on moonring's cosockets. It is
-- the one moonring module that sets a global: drivers read `ngx` as a global
-- when they load, so the shim is installed as _G.ngx (and returned).
--
-- It also appends a package.searchers entry that finds modules under Lua
-- 5.1's paths (where Debian installs OpenResty drivers) once every other
-- searcher has failed, and loads them in an environment that falls back to
-- _G plus the 5.1 globals they use (`unpack`). Owns nothing that needs
-- freeing: sockets and tasks it hands out belong to the task that made them.
local core = require "moonring.core"
local moonring = require "moonring"
local cjson = require "cjson"

local ngx = {}

---------------------------------------------------------------------------
-- Values and time
---------------------------------------------------------------------------

-- The null of Redis replies and JSON: lua-cjson's lightuserdata NULL, as
-- OpenResty's ngx.null is, so cjson.encode writes it as `null`.
ngx.null = cjson.null

ngx.config = {
  subsystem = "http",
  -- lua-nginx-module 0.10.23 (the version Debian 12 ships), in the form
  -- drivers compare against: major * 1000000 + minor * 1000 + patch.
  ngx_lua_version = 10023,
}

-- now() → wall-clock seconds since the epoch (fraction: µs). moonring never
-- caches the time, so update_time has nothing to do.
ngx.now = core.now
function ngx.time() return math.floor(core.now()) end
function ngx.update_time() end

-- sleep(seconds): parks the calling task only.
function ngx.sleep(seconds) return moonring.sleep(seconds) end

---------------------------------------------------------------------------
-- Logging
---------------------------------------------------------------------------

ngx.STDERR, ngx.EMERG, ngx.ALERT, ngx.CRIT = 0, 1, 2, 3
ngx.ERR, ngx.WARN, ngx.NOTICE, ngx.INFO, ngx.DEBUG = 4, 5, 6, 7, 8

-- The moonring log function for each level: STDERR..WARN go to [error],
-- NOTICE and INFO to [info], DEBUG to [info] with --dev only.
local function writer(level)
  if level <= ngx.WARN then return core.log_error end
  if level < ngx.DEBUG or core.dev then return core.log_info end
  return nil
end

-- log(level, ...): the arguments as text, joined with nothing between them,
-- after "[lua] file:line: " of the caller, as OpenResty writes them.
function ngx.log(level, ...)
  if math.type(level) ~= "integer" or level < ngx.STDERR or level > ngx.DEBUG then
    error("ngx.log: bad log level " .. tostring(level) .. " (expected ngx.ERR, ngx.INFO, ...)", 2)
  end
  local write = writer(level)
  if not write then return end
  local n = select("#", ...)
  local parts = { n = n }
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  local at = debug.getinfo(2, "Sl")
  local where = at and (at.short_src:match("[^/]*$") .. ":" .. (at.currentline or 0) .. ": ") or ""
  write("[lua] " .. where .. table.concat(parts, "", 1, n))
end

---------------------------------------------------------------------------
-- Sockets, worker, light threads
---------------------------------------------------------------------------

-- ngx.socket.tcp() → a moonring cosocket. Looked up at each call, so the
-- shim can be loaded by code that runs before any request.
ngx.socket = {
  tcp = function() return moonring.tcp() end,
}

-- OpenResty numbers workers from 0; moonring's --workers from 1 (0 alone).
ngx.worker = {
  id = function() return core.worker_id > 0 and core.worker_id - 1 or 0 end,
  pid = function() return core.pid end,
}

-- spawn(fn, ...) → thread (a moonring task owned like moonring.spawn's). It
-- starts when the spawner next waits, not at once as in OpenResty.
local function thread_spawn(fn, ...)
  if type(fn) ~= "function" then
    error("ngx.thread.spawn: expected a function, got " .. type(fn), 2)
  end
  return moonring.spawn(function(...) return table.pack(fn(...)) end, ...)
end

local function outcome(packed, err)
  if packed then return true, table.unpack(packed, 1, packed.n) end
  return false, err
end

-- wait(t1 [, t2, ...]) → true, results of the first thread to end; or
-- false, its error ("cancelled" if the waiting task is cancelled).
local function thread_wait(...)
  local n = select("#", ...)
  if n == 0 then error("ngx.thread.wait: expected at least one thread", 2) end
  if n == 1 then return outcome((...):join()) end
  local done = moonring.channel(n)
  local watchers = {}
  for i = 1, n do
    local t = select(i, ...)
    watchers[i] = moonring.spawn(function()
      local packed, err = t:join()
      done:put({ packed, err })
    end)
  end
  local first, err = done:take()
  for i = 1, n do watchers[i]:cancel() end
  if not first then return false, err end
  return outcome(first[1], first[2])
end

-- kill(t) → true, or nil and "already terminated".
local function thread_kill(t)
  if t:cancel() then return true end
  return nil, "already terminated"
end

ngx.thread = { spawn = thread_spawn, wait = thread_wait, kill = thread_kill }

---------------------------------------------------------------------------
-- Lua 5.1 modules (Debian's OpenResty drivers)
---------------------------------------------------------------------------

local LUA51_PATH = table.concat({
  "/usr/local/share/lua/5.1/?.lua", "/usr/local/share/lua/5.1/?/init.lua",
  "/usr/share/lua/5.1/?.lua", "/usr/share/lua/5.1/?/init.lua",
}, ";")
ngx.lua51_path = LUA51_PATH

-- Globals of Lua 5.1 that drivers use and 5.4 dropped.
local LUA51_GLOBALS = { unpack = table.unpack }

-- Each 5.1 module gets its own environment: reads fall back to _G, then to
-- LUA51_GLOBALS; globals the module sets stay in its environment.
local function lua51_env()
  return setmetatable({}, {
    __index = function(_, k)
      local v = _G[k]
      if v == nil then v = LUA51_GLOBALS[k] end
      return v
    end,
  })
end

local function lua51_searcher(name)
  local file, err = package.searchpath(name, LUA51_PATH)
  if not file then return "\n\t" .. err end
  local chunk, lerr = loadfile(file, "t", lua51_env())
  if not chunk then error(lerr, 0) end
  return chunk, file
end

-- table.new / table.clear: LuaJIT extensions drivers pcall-require.
local function table_new() return {} end
local function table_clear(t)
  for k in pairs(t) do t[k] = nil end
end

if not package.loaded["moonring.ngx"] then
  local searchers = package.searchers
  searchers[#searchers + 1] = lua51_searcher
  package.preload["table.new"] = function() return table_new end
  package.preload["table.clear"] = function() return table_clear end
end

rawset(_G, "ngx", ngx)
return ngx
