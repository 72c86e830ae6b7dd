-- require "moonring": the Lua API handlers use. The C half is moonring.core;
-- handler shapes and middleware are in moonring.handler.
local core = require "moonring.core"
local handler = require "moonring.handler"

local moonring = {
  version = core.version,
  sleep = core.sleep,             -- sleep(seconds): parks the calling task only
  spawn = core.spawn,             -- spawn(fn, ...) → task, owned by this request
  background = core.background,   -- background(fn, ...) → task, owned by the server
  channel = core.channel,         -- channel([size]) → ch with put, take, close
  select = core.select,           -- select{ ch, {ch, v}, timeout, ... } → op, value
  timeout = core.timeout,         -- timeout(seconds) → a deadline for select
  now = core.now,                 -- now() → wall-clock seconds since the epoch (fraction: µs)
  call = handler.call,            -- call(h, req [, respond, raise])
  middleware = handler.middleware,
}

local Stream = {}
Stream.__index = Stream
function Stream.__moonring_body(self, out, res)
  return self.fn(out, res)
end

-- stream(function(out) ... end): a body written by fn with out:write(s),
-- which parks while the client is slower than fn; out:close() (or fn
-- returning) ends it.
function moonring.stream(fn)
  if type(fn) ~= "function" then
    error("moonring.stream: expected a function(out), got " .. type(fn), 2)
  end
  return setmetatable({ fn = fn }, Stream)
end

-- limit{ concurrency = n, queue = m, queue_timeout = s }: middleware.
function moonring.limit(opts)
  return require("moonring.limit")(opts)
end

-- The routes of the running app: { { path =, file =, methods = }, ... }.
function moonring.routes()
  return require("moonring.app").routes()
end

return moonring
