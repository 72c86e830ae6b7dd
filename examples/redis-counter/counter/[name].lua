-- /counter/:name — GET reads the counter, POST adds one (INCR: atomic in
-- Redis, however many workers or servers count at once), DELETE resets it.
local store = require "_lib.store"

-- The counter's key, or nil and a 400 response.
local function key_of(req)
  local key = store.key(req.params.name)
  if not key then
    return nil, store.json(400, { error = "a counter name is 1-64 letters, digits, _ or -" })
  end
  return key
end

return {
  GET = function(req)
    local key, bad = key_of(req)
    if not key then return bad end
    local v, failed = store.call("GET", key)
    if v == nil then return failed end
    return store.answer(req.params.name, tonumber(v) or 0)     -- a missing key is redis.null: 0
  end,

  POST = function(req)
    local key, bad = key_of(req)
    if not key then return bad end
    local n, failed = store.call("INCR", key)
    if n == nil then return failed end
    return store.answer(req.params.name, n)
  end,

  DELETE = function(req)
    local key, bad = key_of(req)
    if not key then return bad end
    local _, failed = store.call("DEL", key)
    if failed then return failed end
    return store.answer(req.params.name, 0)
  end,
}
