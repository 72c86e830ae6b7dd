-- moonring app for `make bench`: GET /proxy relays GET /upstream of the
-- bench's upstream nginx (port in BENCH_UPSTREAM_PORT, set by bench/run):
-- its status, content type and body, over moonring.http's pooled keep-alive
-- connections (at most 64 idle kept, as nginx's `keepalive 64` and Node's
-- agent in bench/nginx.conf and bench/node-server.js). The upstream is an
-- http.client, its options checked once (as nginx's upstream block).
local http = require "moonring.http"

local PORT = os.getenv("BENCH_UPSTREAM_PORT")
local upstream = PORT and http.client{ url = "http://127.0.0.1:" .. PORT, pool_size = 64 }

local function text(status, body)
  return { status = status, headers = { ["content-type"] = "text/plain" }, body = body }
end

return function(req)
  if not upstream then return text(500, "BENCH_UPSTREAM_PORT is not set\n") end
  local res, err = upstream:get("/upstream")
  if not res then return text(502, "upstream: " .. err .. "\n") end
  return {
    status = res.status,
    headers = { ["content-type"] = res.headers["content-type"] or "application/octet-stream" },
    body = res.body,
  }
end
