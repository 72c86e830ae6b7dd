-- require "moonring.jobs" (also moonring.jobs): background jobs, for work
-- that takes longer than a request should hold one (docs/jobs.md).
--
--   jobs.define("resize", function(args) ... return result end, { timeout = 30 })
--   return function(req) return jobs.accepted("resize", { id = 7 }) end   -- 202
--
-- This module is moonring's, never reloaded: the definitions, the store and
-- the runners survive hot reloads; a reload that runs jobs.define again
-- replaces the definition (the next attempt runs the new code). Runners are
-- server tasks (moonring.background), `concurrency` per worker, started at
-- the first configure or enqueue; each runs one job at a time in a child
-- task it cancels at the job's timeout. Stores (moonring.jobs.memory,
-- moonring.jobs.redis) own the records; this file owns definitions,
-- settings and runners.
local moonring = require "moonring"
local core = require "moonring.core"
local values = require "moonring.jobs.values"
local memory = require "moonring.jobs.memory"

local jobs = {}

local DEFAULTS = { timeout = 60, retries = 3, backoff = 1 }
local MAX_BACKOFF = 60               -- seconds; a larger `backoff` is its own cap
local JSON = "application/json"

local settings = { concurrency = 4, keep = 3600, run = true }   -- read by the stores
local store_opts = { kind = "memory" }
local store                          -- created at first use
local gen = 0                        -- runners of an older generation stop
local runners = {}                   -- slot → runner task of this generation
local keeper                         -- the Redis store's maintenance task
local defs = {}                      -- name → definition

---------------------------------------------------------------------------
-- Ids: random, so a status URL cannot be guessed
---------------------------------------------------------------------------

local random_buf, random_pos = "", 1

local function random_id()
  if random_pos + 12 > #random_buf then
    local f = io.open("/dev/urandom", "rb")     -- never blocks once the kernel is seeded
    random_buf = f and f:read(1200) or nil
    if f then f:close() end
    if not random_buf then
      local t = {}
      for i = 1, 1200 do t[i] = string.char(math.random(0, 255)) end
      random_buf = table.concat(t)
    end
    random_pos = 1
  end
  local bytes = random_buf:sub(random_pos, random_pos + 11)
  random_pos = random_pos + 12
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

---------------------------------------------------------------------------
-- Definitions
---------------------------------------------------------------------------

local function check_seconds(opts, key, what, min_exclusive)
  local v = opts[key]
  if v == nil then return DEFAULTS[key] end
  if type(v) ~= "number" or v ~= v or v < 0 or (min_exclusive and v == 0) or v == math.huge then
    error(string.format("moonring.jobs.%s: %s must be seconds (a number %s 0), got %s",
      what, key, min_exclusive and ">" or ">=", tostring(v)), 3)
  end
  return v
end

local DEFINE_OPTIONS = { timeout = true, retries = true, backoff = true }

-- define(name, fn [, { timeout = s, retries = n, backoff = s }]) → name.
-- A reload that fails puts back the definition the running code made (an
-- on_reload hook of the failed attempt's define runs at once, and finds its
-- definition still in place with the previous one still live).
function jobs.define(name, fn, opts)
  if type(name) ~= "string" or name == "" then
    error("moonring.jobs.define: expected a job name (a non-empty string), got " .. tostring(name), 2)
  end
  if type(fn) ~= "function" then
    error("moonring.jobs.define: expected a function(args) for job " .. name .. ", got " .. type(fn), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("moonring.jobs.define: options must be a table, got " .. type(opts), 2)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if not DEFINE_OPTIONS[k] then error("moonring.jobs.define: unknown option " .. tostring(k), 2) end
  end
  local retries = opts.retries == nil and DEFAULTS.retries or opts.retries
  if math.type(retries) ~= "integer" or retries < 0 then
    error("moonring.jobs.define: retries must be a whole number >= 0, got " .. tostring(opts.retries), 2)
  end
  local def = {
    name = name, fn = fn, retries = retries,
    timeout = check_seconds(opts, "timeout", "define", true),
    backoff = check_seconds(opts, "backoff", "define"),
    prev = defs[name],       -- kept only while the code that defined it may come back
  }
  defs[name] = def
  moonring.on_reload(function()
    local now = defs[name]
    if now == def and def.prev then
      defs[name] = def.prev            -- this reload failed: the running code's again
    elseif now and now.prev == def then
      now.prev = nil                   -- replaced for good
    end
    def.prev = nil
  end)
  return name
end

---------------------------------------------------------------------------
-- Running one job
---------------------------------------------------------------------------

local function message(err)
  if type(err) == "string" then return err end
  local ok, s = pcall(tostring, err)
  return ok and type(s) == "string" and s or "(an error that is not a string)"
end

local function trace(err)
  return { message = message(err), traceback = debug.traceback(message(err), 2) }
end

-- The outcome of a failed attempt: a retry after the backoff, or failed.
local function failure(job, def, msg, tb)
  local head = string.format("moonring.jobs: job %s %s: attempt %d of %d failed", job.name, job.id,
    job.attempts, def.retries + 1)
  if job.attempts <= def.retries then
    local delay = math.min(def.backoff * 2 ^ (job.attempts - 1), math.max(MAX_BACKOFF, def.backoff))
    core.log_error(string.format("%s (retry in %g s): %s", head, delay, tb or msg))
    return { state = "queued", error = msg, delay = delay }
  end
  core.log_error(string.format("%s, the last: %s", head, tb or msg))
  return { state = "failed", error = msg }
end

-- Runs def.fn(job.args) in a child task until it returns or the timeout,
-- renewing the session's lease meanwhile. → true, result; false, message,
-- traceback; or "lost" when the lease was lost (another runner has it).
local function execute(session, job, def)
  local done = moonring.channel(1)
  local child = moonring.spawn(function()
    done:put(table.pack(xpcall(def.fn, trace, job.args)))
  end)
  local deadline = moonring.timeout(def.timeout)
  local ok, a, b, c = pcall(function()
    while true do
      local ops = { done, deadline }
      if session.renew_every then ops[3] = moonring.timeout(session.renew_every) end
      local op, r = moonring.select(ops)
      if op == done then
        if r[1] then return true, r[2] end
        return false, r[2].message, r[2].traceback
      elseif op == deadline then
        return false, "timeout"
      elseif session:renew(job) == false then
        return "lost"
      end
    end
  end)
  if not ok then               -- this runner was cancelled (the server stops)
    child:cancel()
    error(a, 0)
  end
  if a ~= true then child:cancel() end
  return a, b, c
end

local UNKNOWN = { retries = DEFAULTS.retries, backoff = DEFAULTS.backoff }

local function outcome_of(session, job)
  local def = defs[job.name]
  if not def then
    return failure(job, UNKNOWN, "no job named " .. job.name .. " is defined in this process")
  elseif job.bad_args then
    return failure(job, { retries = 0 }, "its arguments cannot be read: " .. job.bad_args)
  elseif job.attempts > def.retries + 1 then        -- its last attempt's runner died
    return failure(job, def, job.last_error or "no attempts left")
  end
  local ok, value, tb = execute(session, job, def)
  if ok == "lost" then return nil end
  if ok then
    local result, why = values.copy(value)
    if not why then return { state = "done", result = result } end
    value, tb = "its result cannot be stored: " .. why, nil
  end
  return failure(job, def, value, tb)
end

local function run_job(session, job)
  local outcome = outcome_of(session, job)
  if not outcome then
    core.log_error(string.format("moonring.jobs: job %s %s: lost its lease while running; " ..
      "its outcome is not recorded (it runs again elsewhere)", job.name, job.id))
    return
  end
  local ok, err = session:finish(job, outcome)
  if ok == nil then
    core.log_error(string.format("moonring.jobs: job %s %s: its outcome could not be recorded " ..
      "(%s); it runs again once its lease expires", job.name, job.id, tostring(err)))
  end
end

---------------------------------------------------------------------------
-- Stores and runners
---------------------------------------------------------------------------

local function current_store()
  if not store then
    if store_opts.kind == "memory" then
      store = memory.new(settings)
    else
      store = require("moonring.jobs.redis").new(settings, store_opts, random_id)
    end
  end
  return store
end

-- A runner: takes jobs one at a time while its generation is current and
-- its slot within `concurrency`.
local function runner(my_gen, st, slot)
  local function active() return gen == my_gen and slot <= settings.concurrency end
  local session = st:open()
  while active() do
    local job, err = session:take(active)
    if job then run_job(session, job)
    elseif err == "cancelled" then break end
  end
  session:close()
end

local function maintain(my_gen, st)
  local session = st:open()
  while gen == my_gen do
    session:maintain()
    moonring.sleep(math.min(1, st.opts.lease / 4))
  end
  session:close()
end

-- Starts what is missing: a runner per slot, the Redis store's keeper.
local function ensure_runners()
  if not settings.run then return end
  local st = current_store()
  for slot = 1, settings.concurrency do
    local t = runners[slot]
    if not t or t:status() == "done" then runners[slot] = moonring.background(runner, gen, st, slot) end
  end
  if st.kind == "redis" and (not keeper or keeper:status() == "done") then
    keeper = moonring.background(maintain, gen, st)
  end
end

-- The runners of now stop after their current job.
local function new_generation()
  gen = gen + 1
  runners, keeper = {}, nil
  if store and store.wake_all then store:wake_all() end
end

---------------------------------------------------------------------------
-- Configuration
---------------------------------------------------------------------------

local REDIS_DEFAULTS = { host = "127.0.0.1", port = 6379, prefix = "moonring:jobs", lease = 30, timeout = 5 }
local REDIS_TYPES = { host = "string", port = "number", prefix = "string", lease = "number", timeout = "number" }

local function redis_options(r)
  if type(r) ~= "table" then
    error("moonring.jobs.configure: store.redis must be a table, got " .. type(r), 4)
  end
  local out = { kind = "redis" }
  for k, v in pairs(r) do
    if not REDIS_TYPES[k] then error("moonring.jobs.configure: unknown store.redis option " .. tostring(k), 4) end
    if type(v) ~= REDIS_TYPES[k] then
      error("moonring.jobs.configure: store.redis." .. k .. " must be a " .. REDIS_TYPES[k] .. ", got " .. type(v), 4)
    end
  end
  for k, d in pairs(REDIS_DEFAULTS) do
    if r[k] == nil then out[k] = d else out[k] = r[k] end
  end
  if math.type(out.port) ~= "integer" or out.port < 1 or out.port > 65535 then
    error("moonring.jobs.configure: store.redis.port must be a port number, got " .. tostring(out.port), 4)
  end
  if not (out.lease > 0 and out.timeout > 0) then
    error("moonring.jobs.configure: store.redis.lease and timeout must be seconds > 0", 4)
  end
  return out
end

local function store_options(s)
  if s == "memory" then return { kind = "memory" } end
  if type(s) == "table" and s.redis ~= nil and next(s, next(s)) == nil then
    return redis_options(s.redis)
  end
  error("moonring.jobs.configure: store must be \"memory\" or { redis = { host =, port =, prefix = } }, got "
    .. tostring(s), 3)
end

local function same_place(a, b)
  return a.kind == b.kind and a.host == b.host and a.port == b.port and a.prefix == b.prefix
end

local CONFIGURE_OPTIONS = { concurrency = true, store = true, keep = true, run = true }

-- configure{ concurrency = n, store = ..., keep = s, run = bool }: each
-- option given replaces the current one; the rest stay. Then starts the
-- runners (unless run = false). Safe to call again with the same options
-- (a reload does).
function jobs.configure(opts)
  if type(opts) ~= "table" then error("moonring.jobs.configure: expected an options table", 2) end
  for k in pairs(opts) do
    if not CONFIGURE_OPTIONS[k] then error("moonring.jobs.configure: unknown option " .. tostring(k), 2) end
  end
  local c = opts.concurrency
  if c ~= nil and (math.type(c) ~= "integer" or c < 1) then
    error("moonring.jobs.configure: concurrency must be a whole number >= 1, got " .. tostring(c), 2)
  end
  if opts.run ~= nil and type(opts.run) ~= "boolean" then
    error("moonring.jobs.configure: run must be a boolean, got " .. type(opts.run), 2)
  end
  local keep = opts.keep ~= nil and check_seconds(opts, "keep", "configure") or settings.keep
  local new_store = opts.store ~= nil and store_options(opts.store)
  if new_store and not same_place(new_store, store_opts) then
    local left = store and store:count_unfinished() or 0
    if left > 0 then
      error(string.format("moonring.jobs.configure: cannot change the store while %d job(s) are " ..
        "queued or running in memory", left), 2)
    end
    store_opts, store = new_store, nil
    new_generation()
  elseif new_store and store_opts.kind == "redis" then
    for k, v in pairs(new_store) do store_opts[k] = v end     -- lease, timeout: in place
  end
  settings.keep = keep
  if c and c ~= settings.concurrency then
    settings.concurrency = c
    if store and store.wake_all then store:wake_all() end
  end
  if opts.run ~= nil and opts.run ~= settings.run then
    settings.run = opts.run
    new_generation()
  end
  ensure_runners()
end

---------------------------------------------------------------------------
-- Enqueueing and reading
---------------------------------------------------------------------------

local function enqueue(name, args, level)
  if type(name) ~= "string" then
    error("moonring.jobs.enqueue: expected a job name (string), got " .. type(name), level + 1)
  end
  if not defs[name] then
    error("moonring.jobs.enqueue: no job named " .. string.format("%q", name) ..
      " (define it with jobs.define first)", level + 1)
  end
  local copy, why = values.copy(args)
  if why then
    error("moonring.jobs.enqueue: the arguments of job " .. name .. " cannot be stored: " .. why, level + 1)
  end
  local st = current_store()
  ensure_runners()
  local id = random_id()
  local ok, err = st:enqueue({ id = id, name = name, args = copy, enqueued_at = moonring.now() })
  if not ok then return nil, err end
  return id
end

-- enqueue(name, args) → id, or nil, err (the store cannot be reached).
function jobs.enqueue(name, args)
  local id, err = enqueue(name, args, 2)
  return id, err
end

-- status(id) → { id, name, state, attempts, result, error, enqueued_at,
-- started_at, finished_at }, or nil (no such job), or nil, err.
function jobs.status(id)
  if type(id) ~= "string" then
    error("moonring.jobs.status: expected a job id (string), got " .. type(id), 2)
  end
  if not id:match("^[%w_-]+$") or #id > 64 then return nil end
  local st, err = current_store():status(id)
  return st, err
end

---------------------------------------------------------------------------
-- HTTP: 202 Accepted and the status route
---------------------------------------------------------------------------

local function json_response(status, value, headers)
  headers = headers or {}
  headers["content-type"] = JSON
  headers["cache-control"] = "no-store"
  return { status = status, headers = headers, body = assert(values.encode(value)) .. "\n" }
end

-- accepted(name, args [, base_url = "/jobs/"]) → a 202 response with
-- Location: base_url .. id and the body {"id":…,"status_url":…}; a 503
-- (with Retry-After) when the store cannot take the job.
function jobs.accepted(name, args, base_url)
  if base_url == nil then base_url = "/jobs/" end
  if type(base_url) ~= "string" then
    error("moonring.jobs.accepted: base_url must be a string, got " .. type(base_url), 2)
  end
  local id, err = enqueue(name, args, 2)
  if not id then
    return json_response(503, { error = "the job store is unavailable: " .. tostring(err) },
      { ["retry-after"] = "1" })
  end
  local url = base_url .. id
  return json_response(202, { id = id, status_url = url }, { location = url })
end

-- status_handler(req): a route answering GET (and HEAD) /…/<id> with the
-- job's status as JSON: 200, 404 {"error":"no such job"}, or 503 when the
-- store cannot be reached. The id is req.params.id, else the last segment.
function jobs.status_handler(req)
  if req.request_method ~= "GET" and req.request_method ~= "HEAD" then
    return json_response(405, { error = "method not allowed" }, { allow = "GET, HEAD" })
  end
  local id = req.params and req.params.id or (req.uri or ""):match("([^/]+)/*$")
  local st, err
  if id then st, err = jobs.status(id) end
  if st then return json_response(200, st) end
  if err then
    return json_response(503, { error = "the job store is unavailable: " .. tostring(err) },
      { ["retry-after"] = "1" })
  end
  return json_response(404, { error = "no such job" })
end

return jobs
