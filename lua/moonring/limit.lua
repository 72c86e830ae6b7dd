-- moonring.limit{ concurrency = n, queue = m, queue_timeout = s }: middleware
-- that lets at most n requests of the routes it wraps run their handler at
-- once. Up to m more wait their turn, in order, for at most s seconds
-- (default: as long as their request lives); the rest are shed at once with
-- 503 and Retry-After. A slot is held until the handler has its response
-- (streaming the body does not hold it), and given back whatever happens:
-- an error, a cancelled request, a client that left.
local core = require "moonring.core"
local handler = require "moonring.handler"

local function shed()
  return {
    status = 503,
    headers = { ["content-type"] = "text/plain; charset=utf-8", ["retry-after"] = "1" },
    body = "Service Unavailable\n",
  }
end

return function(opts)
  if type(opts) ~= "table" then error("moonring.limit: expected an options table", 2) end
  local concurrency = opts.concurrency
  if type(concurrency) ~= "number" or concurrency < 1 or concurrency % 1 ~= 0 then
    error("moonring.limit: concurrency must be a whole number >= 1", 2)
  end
  local queue = opts.queue or 0
  local queue_timeout = opts.queue_timeout
  local active = 0
  local waiting, first, last = {}, 1, 0     -- a FIFO of one-slot channels

  -- A slot is free: the first waiter gets it (handed over, so `active`
  -- stays), or it is free for the next request.
  local function release()
    while first <= last do
      local ch = waiting[first]
      waiting[first] = nil
      first = first + 1
      if ch then
        ch:put(true)                       -- buffered: never waits
        return
      end
    end
    active = active - 1
  end

  local function forget(ch)
    for i = first, last do
      if waiting[i] == ch then waiting[i] = false end
    end
  end

  -- true once a slot is ours, false when shed.
  local function acquire()
    if active < concurrency then
      active = active + 1
      return true
    end
    local queued = 0
    for i = first, last do if waiting[i] then queued = queued + 1 end end
    if queued >= queue then return false end
    local ch = core.channel(1)
    last = last + 1
    waiting[last] = ch
    local ok, op = pcall(function()
      if queue_timeout then return core.select { ch, core.timeout(queue_timeout) } end
      local v, err = ch:take()
      if v == nil then error(err, 0) end   -- "cancelled"
      return ch
    end)
    if ok and op == ch then return true end
    forget(ch)
    if #ch > 0 then                        -- the slot came as it gave up: pass it on
      if ok then return true end
      release()
    end
    if not ok then error(op, 0) end        -- cancelled while waiting
    return false
  end

  local held = setmetatable({}, { __close = release })

  return function(inner)
    return function(req)
      if not acquire() then return shed() end
      local slot <close> = held
      return handler.call(inner, req)
    end
  end
end
