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
  run_in_thread = core.run_in_thread, -- run_in_thread(module, fn, ...) → fn's results, in a thread
  fs = {                          -- files, on libuv's thread pool; each → value or nil, err
    read = core.fs_read,          -- read(path [, {timeout}]) → string
    write = core.fs_write,        -- write(path, data [, {append, mode, timeout}]) → true
    stat = core.fs_stat,          -- stat(path [, {timeout}]) → { size, mtime, type, mode }
    list = core.fs_list,          -- list(path [, {timeout}]) → { {name =, type =}, ... }
  },
  file = core.file,               -- file(path [, {offset, length}]) → a body sent by sendfile
  tcp = core.tcp,                 -- tcp() → a cosocket (OpenResty's API; times in ms)
  resolve = core.resolve,         -- resolve(name [, {ttl, timeout}]) → { "addr", ... }
  dns = core.dns,                 -- dns{ ttl = s }: the lookup cache's TTL
  call = handler.call,            -- call(h, req [, respond, raise])
  middleware = handler.middleware,
}

-- deadline() → seconds left before this request's deadline (its 504), or
-- nil outside a request and once the response started.
moonring.deadline = core.deadline

-- http: the HTTP client, also require "moonring.http" (request, get, post;
-- plain HTTP only). It needs only moonring.core, so loading it here is safe.
moonring.http = require "moonring.http"

-- budget(max [, share]) → a timeout for one dependency: `max` seconds, but
-- never more than `share` (default 1) of what the request has left.
function moonring.budget(max, share)
  if type(max) ~= "number" or max < 0 then
    error("moonring.budget: expected a number of seconds >= 0, got " .. tostring(max), 2)
  end
  if share ~= nil and (type(share) ~= "number" or share <= 0 or share > 1) then
    error("moonring.budget: share must be a number in (0, 1], got " .. tostring(share), 2)
  end
  local left = core.deadline()
  if left == nil then return max end
  left = left * (share or 1)
  return left < max and left or max
end

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

-- state(name [, init]) → a per-worker table that survives reloads: this
-- module is moonring's, never reloaded. `init` (a table, or a function
-- returning one) is used only the first time `name` is asked for.
local states = {}
function moonring.state(name, init)
  if type(name) ~= "string" then
    error("moonring.state: expected a name (string), got " .. type(name), 2)
  end
  local t = states[name]
  if t == nil then
    if type(init) == "function" then t = init()
    elseif init == nil then t = {}
    else t = init end
    if type(t) ~= "table" then
      error("moonring.state: init must be a table or a function returning one, got " .. type(t), 2)
    end
    states[name] = t
  end
  return t
end

-- on_reload(fn): fn runs once, after a later reload replaced the code that
-- registered it (to stop what that code's top level started).
function moonring.on_reload(fn)
  if type(fn) ~= "function" then
    error("moonring.on_reload: expected a function, got " .. type(fn), 2)
  end
  require("moonring.app").on_reload(fn)
end

-- worker() → { id = k, pid = p }: k is the supervisor's number for this
-- worker (0 without --workers).
function moonring.worker()
  return { id = core.worker_id, pid = core.pid }
end

-- The routes of the running app: { { path =, file =, methods = }, ... }.
function moonring.routes()
  return require("moonring.app").routes()
end

-- Submodules loaded on first use: moonring.jobs is require "moonring.jobs";
-- moonring.json is require("moonring.json").json. The batteries (DESIGN
-- 4.8, docs/middleware.md) are all here, so an app pays only for those it
-- uses.
local lazy = {
  jobs = { "moonring.jobs" },
  static = { "moonring.static" },                 -- static{ root, prefix, index, max_age }
  params = { "moonring.params" },                 -- params{}: req.query, req.form, req.files
  parse_query = { "moonring.params", "parse_query" },   -- parse_query(s) → table | nil, err
  cookies = { "moonring.cookies" },               -- cookies{}: req.cookies, res.cookies
  session = { "moonring.session" },               -- session{ secret, store }: req.session
  csrf = { "moonring.csrf" },                     -- csrf{}: 403 without a valid token
  json = { "moonring.json", "json" },             -- json(value [, status [, headers]])
  json_body = { "moonring.json", "json_body" },   -- json_body{}: req.json
  array = { "moonring.json", "array" },           -- array(t): a JSON array, even empty
  cors = { "moonring.cors" },                     -- cors{ origins, methods, ... }
  redirect = { "moonring.helpers", "redirect" },  -- redirect(url [, status])
  html = { "moonring.helpers", "html" },          -- html(s [, status])
  text = { "moonring.helpers", "text" },          -- text(s [, status])
  etag = { "moonring.helpers", "etag" },          -- etag{}: conditional GET for string bodies
  security_headers = { "moonring.helpers", "security_headers" },
  proxy_headers = { "moonring.helpers", "proxy_headers" },   -- proxy_headers{ trusted = {...} }
  charset = { "moonring.helpers", "charset" },    -- charset{}: "; charset=utf-8" on text/* types
  template = { "moonring.template" },             -- template.render(file, env), .compile(s)
  defaults = { "moonring.defaults" },             -- defaults.site{}, defaults.api{}
}
setmetatable(moonring, {
  __index = function(t, key)
    local spec = lazy[key]
    if not spec then return nil end
    local v = require(spec[1])
    if spec[2] then v = v[spec[2]] end
    rawset(t, key, v)
    return v
  end,
})

return moonring
