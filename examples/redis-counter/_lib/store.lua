-- The counters live in Redis, so every worker and every server pointed at
-- the same Redis shares them. A request borrows a connection from this
-- worker's pool (redis.connect finds an idle one for REDIS_HOST:REDIS_PORT)
-- and gives it back with keepalive, or closes it when the call failed.
local moonring = require "moonring"
local redis = require "moonring.redis"
local cjson = require "cjson"

local store = {
  host = os.getenv("REDIS_HOST") or "127.0.0.1",
  port = tonumber(os.getenv("REDIS_PORT") or "6379"),
  timeout = 1,          -- seconds for each network wait; Redis answers in µs
}

function store.json(status, value)
  return {
    status = status,
    headers = { ["content-type"] = "application/json" },
    body = cjson.encode(value) .. "\n",
  }
end

local function unavailable(err)
  local res = store.json(503, { error = "redis unavailable: " .. tostring(err) })
  res.headers["retry-after"] = "1"
  return res
end

-- call(command, ...) → the reply, or nil and an error response: 503 when
-- Redis cannot be reached, 500 for an error reply (a bug of ours).
function store.call(command, ...)
  local c, err = redis.connect(store.host, store.port, { timeout = store.timeout })
  if not c then return nil, unavailable(err) end
  local v, cerr = c:call(command, ...)
  -- Back to the pool, idle for up to 30 s. After an error reply the
  -- connection is fine; after a failure it is closed and this says so.
  local healthy = c:keepalive(30)
  if v ~= nil then return v end
  if not healthy then return nil, unavailable(cerr) end
  return nil, store.json(500, { error = "redis: " .. cerr })
end

-- The Redis key of a counter, or nil for a name that is not one.
function store.key(name)
  if #name > 64 or not name:match("^[%w_%-]+$") then return nil end
  return "counter:" .. name
end

function store.answer(name, count)
  return store.json(200, { name = name, count = count, worker = moonring.worker().id })
end

return store
