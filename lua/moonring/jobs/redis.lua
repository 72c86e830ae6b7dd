-- moonring.jobs' Redis store, so jobs outlive a restart and any worker or
-- process configured with the same Redis and prefix P can run them. Keys:
--   P:queue      list of ids waiting (LPUSH to enqueue, taken from the right)
--   P:running    list of ids taken by a runner (BLMOVE from P:queue)
--   P:leases     sorted set: id → when its runner's lease ends (Redis TIME)
--   P:delayed    sorted set: id → when its retry is due
--   P:job:<id>   hash: id, name, args, state, attempts, result, error,
--                enqueued_at, started_at, finished_at, token (of the lease)
-- A runner renews its lease while the job runs; maintain() (every second in
-- each running process) requeues jobs whose lease expired (their runner
-- died) and queues due retries. Every change is one script, so a crash
-- between two commands loses nothing. Arguments and results are JSON
-- (moonring.jobs.values). Handler calls use pooled connections; each runner
-- owns one connection (a session), reconnecting after a failure.
local moonring = require "moonring"
local core = require "moonring.core"
local redis = require "moonring.redis"
local values = require "moonring.jobs.values"

local store = {}

local null = redis.null

local NOW = "local t = redis.call('TIME') local now = t[1] + t[2] / 1e6\n"

-- KEYS: job, queue. ARGV: id, name, args, enqueued_at.
local ENQUEUE = [[
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'name', ARGV[2], 'args', ARGV[3],
  'state', 'queued', 'attempts', 0, 'enqueued_at', ARGV[4])
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
]]

-- KEYS: running, leases, job. ARGV: id, token, lease, started_at.
-- → { attempts, name, args, last error } or nil (not a queued job: dropped).
local START = NOW .. [[
if redis.call('HGET', KEYS[3], 'state') ~= 'queued' then
  redis.call('LREM', KEYS[1], 1, ARGV[1])
  return false
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
local attempts = redis.call('HINCRBY', KEYS[3], 'attempts', 1)
redis.call('HSET', KEYS[3], 'state', 'running', 'token', ARGV[2], 'started_at', ARGV[4])
local f = redis.call('HMGET', KEYS[3], 'name', 'args', 'error')
return { attempts, f[1], f[2] or 'null', f[3] or '' }
]]

-- KEYS: leases, job. ARGV: id, token, lease. → 1, or 0 if the lease was lost.
local RENEW = NOW .. [[
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
]]

-- KEYS: running, leases, job, delayed. ARGV: id, token, state, result,
-- error, finished_at, keep (ms), delay (s). → 1, or 0 if the lease was lost.
local FINISH = NOW .. [[
if redis.call('HGET', KEYS[3], 'token') ~= ARGV[2] then return 0 end
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], 'token')
if ARGV[3] == 'queued' then
  redis.call('HSET', KEYS[3], 'state', 'queued', 'error', ARGV[5])
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[8]), ARGV[1])
  return 1
end
redis.call('HSET', KEYS[3], 'state', ARGV[3], 'finished_at', ARGV[6])
if ARGV[3] == 'done' then
  redis.call('HSET', KEYS[3], 'result', ARGV[4])
  redis.call('HDEL', KEYS[3], 'error')
else
  redis.call('HSET', KEYS[3], 'error', ARGV[5])
end
redis.call('PEXPIRE', KEYS[3], ARGV[7])
return 1
]]

-- KEYS: queue, running, leases, delayed. ARGV: job key prefix, lease.
-- Due retries join the queue; a taken id without a lease (its runner is
-- between BLMOVE and START) gets one; ids whose lease expired go back to
-- the front of the queue. → { retries queued, jobs requeued }.
local MAINTAIN = NOW .. [[
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[4], id)
  if redis.call('HGET', ARGV[1] .. id, 'state') == 'queued' then redis.call('LPUSH', KEYS[1], id) end
end
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  if not redis.call('ZSCORE', KEYS[3], id) then
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), id)
  end
end
local lost = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(lost) do
  local job = ARGV[1] .. id
  redis.call('ZREM', KEYS[3], id)
  redis.call('LREM', KEYS[2], 1, id)
  local state = redis.call('HGET', job, 'state')
  if state == 'running' then
    redis.call('HSET', job, 'state', 'queued', 'error', 'lease expired (its runner stopped)')
    redis.call('HDEL', job, 'token')
  end
  if state == 'running' or state == 'queued' then redis.call('RPUSH', KEYS[1], id) end
end
return { #due, #lost }
]]

local Store = { kind = "redis" }
Store.__index = Store

-- new(settings, opts, random_id) → store. opts: host, port, prefix, lease
-- (s), timeout (s); settings.keep is read when a job finishes.
function store.new(settings, opts, random_id)
  local p = opts.prefix
  return setmetatable({
    settings = settings, opts = opts, random_id = random_id,
    queue = p .. ":queue", running = p .. ":running", leases = p .. ":leases",
    delayed = p .. ":delayed", job_prefix = p .. ":job:",
    down = false,
  }, Store)
end

function Store:connect()
  return redis.connect(self.opts.host, self.opts.port, { timeout = self.opts.timeout })
end

-- A failure reaching Redis is logged once until it works again.
function Store:report(err)
  if err == "cancelled" or self.down then return end
  self.down = err
  core.log_error(string.format("moonring.jobs: redis %s:%d: %s (retrying every second)",
    self.opts.host, self.opts.port, tostring(err)))
end

function Store:recovered()
  if not self.down then return end
  self.down = false
  core.log_info(string.format("moonring.jobs: redis %s:%d reachable again", self.opts.host, self.opts.port))
end

-- fn(c) on a pooled connection, for calls from any task → fn's results.
function Store:with_client(fn)
  local c, err = self:connect()
  if not c then return nil, err end
  local v, e = fn(c)
  if v == nil and e then c:close() else c:keepalive() end
  return v, e
end

local function time_text(t)
  return string.format("%.6f", t)
end

-- enqueue(rec) → true, or nil, err.
function Store:enqueue(rec)
  local args = assert(values.encode(rec.args))        -- checked by the caller
  return self:with_client(function(c)
    return c:eval(ENQUEUE, 2, self.job_prefix .. rec.id, self.queue,
      rec.id, rec.name, args, time_text(rec.enqueued_at))
  end)
end

local NUMBERS = { attempts = true, enqueued_at = true, started_at = true, finished_at = true }
local HIDDEN = { args = true, token = true }

-- status(id) → the record, nil (no such job), or nil, err.
function Store:status(id)
  local flat, err = self:with_client(function(c) return c:hgetall(self.job_prefix .. id) end)
  if not flat then return nil, err end
  if #flat == 0 then return nil end
  local out = {}
  for i = 1, #flat - 1, 2 do
    local k, v = flat[i], flat[i + 1]
    if NUMBERS[k] then out[k] = math.tointeger(tonumber(v)) or tonumber(v)
    elseif k == "result" then out.result = values.decode(v)
    elseif not HIDDEN[k] then out[k] = v end
  end
  return out
end

function Store:count_unfinished()
  return 0       -- the jobs stay in Redis: switching stores loses none
end

---------------------------------------------------------------------------
-- Sessions: one runner's connection
---------------------------------------------------------------------------

local Session = {}
Session.__index = Session

function Store:open()
  -- a lease is renewed three times per lease period while a job runs
  return setmetatable({ store = self, c = false, renew_every = self.opts.lease / 3 }, Session)
end

function Session:close()
  if self.c then self.c:close() end
  self.c = false
end

-- A failed call: drop the connection (the next call reconnects), report.
function Session:failed(err)
  self:close()
  self.store:report(err)
  return nil, err
end

-- call(method, ...) → the reply, or nil, err after a failure.
function Session:call(method, ...)
  local c = self.c
  if not c then
    local err
    c, err = self.store:connect()
    if not c then return self:failed(err) end
    self.c = c
  end
  local v, err = c[method](c, ...)
  if v == nil then return self:failed(err) end
  self.store:recovered()
  return v
end

-- take(active) → the next job { id, name, args, attempts, token, last_error },
-- now running under this process's lease; nil once active() turns false;
-- nil, "cancelled" when the runner is.
-- Waits at most a second in each BLMOVE, so a stopped runner notices.
function Session:take(active)
  local s = self.store
  while active() do
    local id, err = self:call("blmove", s.queue, s.running, "RIGHT", "LEFT", 1)
    if not id then
      if err == "cancelled" then return nil, err end
      moonring.sleep(1)
    elseif id ~= null then
      local token = s.random_id()
      local r = self:call("eval", START, 3, s.running, s.leases, s.job_prefix .. id,
        id, token, s.opts.lease, time_text(moonring.now()))
      if type(r) == "table" then
        local args, bad = values.decode(r[3])
        local name = type(r[2]) == "string" and r[2] or "(no name)"
        return { id = id, name = name, args = args, bad_args = bad, attempts = r[1],
                 token = token, last_error = r[4] ~= "" and r[4] or nil }
      end
      -- not a queued job (dropped), or Redis failed: maintain() gives the
      -- id a lease, and requeues it once that expires
    end
  end
  return nil
end

-- renew(job) → true while this runner holds the job's lease; false once
-- it was lost (the job was requeued, another runner may have it);
-- nil, err when Redis cannot be reached (the lease may still hold).
function Session:renew(job)
  local s = self.store
  local r, err = self:call("eval", RENEW, 2, s.leases, s.job_prefix .. job.id,
    job.id, job.token, s.opts.lease)
  if r == nil then return nil, err end
  return r == 1
end

-- finish(job, outcome) → true; false if the lease was lost; nil, err.
-- outcome as in moonring.jobs.memory. Tried three times, a second apart;
-- a finish that never lands lets the lease expire: the job runs again.
function Session:finish(job, outcome)
  local s = self.store
  local result = ""
  if outcome.state == "done" then result = assert(values.encode(outcome.result)) end
  local keep_ms = math.max(0, math.floor(s.settings.keep * 1000))
  local r, err
  for try = 1, 3 do
    r, err = self:call("eval", FINISH, 4, s.running, s.leases, s.job_prefix .. job.id, s.delayed,
      job.id, job.token, outcome.state, result, outcome.error or "",
      time_text(moonring.now()), keep_ms, outcome.delay or 0)
    if r ~= nil or err == "cancelled" then break end
    if try < 3 then moonring.sleep(1) end
  end
  if r == nil then return nil, err end
  return r == 1
end

-- maintain() → true, or nil, err (see MAINTAIN).
function Session:maintain()
  local s = self.store
  local r, err = self:call("eval", MAINTAIN, 4, s.queue, s.running, s.leases, s.delayed,
    s.job_prefix, s.opts.lease)
  if r == nil then return nil, err end
  if type(r) == "table" and (r[2] or 0) > 0 then
    core.log_info(string.format("moonring.jobs: %d job(s) requeued: their runner's lease expired", r[2]))
  end
  return true
end

return store
