-- moonring app for `make bench`: GET /redis -> the value of bench:key in the
-- bench's redis-server (port in BENCH_REDIS_PORT, set by bench/run), as
-- text/plain, over moonring.redis's pooled connections (at most 64 idle
-- kept, as lua-resty-redis's set_keepalive(10000, 64) in bench/nginx.conf).
local redis = require "moonring.redis"

local PORT = tonumber(os.getenv("BENCH_REDIS_PORT"))
local KEY = "bench:key"
local OPTS = { pool_size = 64 }

local function text(status, body)
  return { status = status, headers = { ["content-type"] = "text/plain" }, body = body }
end

return function(req)
  if not PORT then return text(500, "BENCH_REDIS_PORT is not set\n") end
  local c, err = redis.connect("127.0.0.1", PORT, OPTS)
  if not c then return text(502, "redis: " .. err .. "\n") end
  local v
  v, err = c:get(KEY)
  if v == nil then
    c:close()
    return text(502, "redis: " .. err .. "\n")
  end
  c:keepalive(10)
  if v == redis.null then return text(404, "no such key\n") end
  return text(200, v)
end
