-- moonring.jobs' default store: this worker's memory. Records live in one
-- table by id; a FIFO of ids waits to run; finished records are dropped
-- `keep` seconds after they finish (swept on each enqueue and finish).
-- Owns copies of arguments and results (values.copy); status hands out
-- copies too, so no caller shares a table with a record. A restart loses
-- everything; a hot reload does not (moonring.jobs is never reloaded).
local moonring = require "moonring"
local values = require "moonring.jobs.values"

local memory = {}

local Store = { kind = "memory" }
Store.__index = Store

-- new(settings) → store; settings.keep is read at each sweep, so a later
-- jobs.configure{ keep = s } applies to records already kept.
function memory.new(settings)
  return setmetatable({
    settings = settings,
    records = {},                        -- id → record
    queue = { first = 1, last = 0 },     -- ids ready to run, oldest first
    finished = { first = 1, last = 0 },  -- ids of finished records, oldest first
    waiters = {},                        -- one-slot channels of idle runners
    unfinished = 0,                      -- records queued or running
  }, Store)
end

local function push(q, v)
  q.last = q.last + 1
  q[q.last] = v
end

local function shift(q)
  if q.first > q.last then return nil end
  local v = q[q.first]
  q[q.first] = nil
  q.first = q.first + 1
  return v
end

-- Every idle runner looks at the queue again (a few runners per worker:
-- waking them all is simpler than tracking which one is still alive).
function Store:wake_all()
  local waiters = self.waiters
  self.waiters = {}
  for _, ch in ipairs(waiters) do ch:put(true) end   -- one slot each: never waits
end

-- Finished records older than `keep` seconds go.
function Store:sweep(now)
  local q, keep = self.finished, self.settings.keep
  while q.first <= q.last do
    local rec = self.records[q[q.first]]
    if rec and rec.finished_at + keep > now then break end
    shift(q)
    if rec then self.records[rec.id] = nil end
  end
end

-- enqueue(rec): rec = { id, name, args (a copy), enqueued_at } → true.
function Store:enqueue(rec)
  rec.state, rec.attempts = "queued", 0
  self.records[rec.id] = rec
  self.unfinished = self.unfinished + 1
  push(self.queue, rec.id)
  self:sweep(rec.enqueued_at)
  self:wake_all()
  return true
end

local FIELDS = { "id", "name", "state", "attempts", "error", "enqueued_at", "started_at", "finished_at" }

-- status(id) → a copy of the record (without its arguments), or nil.
function Store:status(id)
  self:sweep(moonring.now())
  local rec = self.records[id]
  if not rec then return nil end
  local out = {}
  for _, k in ipairs(FIELDS) do out[k] = rec[k] end
  out.result = values.copy(rec.result)
  return out
end

function Store:count_unfinished()
  return self.unfinished
end

-- open() → a session for one runner: the store itself (memory needs no
-- connection per runner).
function Store:open()
  return self
end

function Store:close() end

-- take(active) → the next job { id, name, args, attempts } (now running),
-- waiting for one; nil once active() turns false (wake_all makes waiting
-- runners check); nil, "cancelled" when the runner is. A record gone
-- meanwhile is skipped.
function Store:take(active)
  while active() do
    local id = shift(self.queue)
    local rec = id and self.records[id]
    if rec and rec.state == "queued" then
      rec.state, rec.attempts, rec.started_at = "running", rec.attempts + 1, moonring.now()
      return { id = id, name = rec.name, args = values.copy(rec.args), attempts = rec.attempts }
    elseif not id then
      local ch = moonring.channel(1)
      self.waiters[#self.waiters + 1] = ch
      local woken, err = ch:take()
      if not woken then return nil, err end
    end
  end
  return nil
end

-- Memory never loses a runner without losing the job with it: no lease.
function Store:renew()
  return true
end

-- finish(job, outcome) → true. outcome: { state = "done", result = v },
-- { state = "failed", error = msg }, or { state = "queued", error = msg,
-- delay = s } for a retry after `delay` seconds.
function Store:finish(job, outcome)
  local rec = self.records[job.id]
  if not rec or rec.state ~= "running" then return true end
  rec.state, rec.error = outcome.state, outcome.error
  if outcome.state == "queued" then
    moonring.background(function()
      moonring.sleep(outcome.delay)
      if self.records[job.id] == rec and rec.state == "queued" then
        push(self.queue, job.id)
        self:wake_all()
      end
    end)
    return true
  end
  rec.result, rec.finished_at = outcome.result, moonring.now()
  self.unfinished = self.unfinished - 1
  push(self.finished, job.id)
  self:sweep(rec.finished_at)
  return true
end

return memory
