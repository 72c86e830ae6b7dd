-- GET /?budget=0.3 — one request calls three upstreams in parallel with one
-- shared deadline, answers with what arrived in time and marks what did not.
-- Each dependency's fate is decided here, not by whichever timeout fires
-- first somewhere below:
--   * every call runs in its own task, so the three wait at the same time;
--   * each call's timeout is what is left of the shared deadline (and never
--     more than the request itself has left: moonring.budget);
--   * the handler stops waiting at the deadline and answers; the calls still
--     running belong to this request, so they are cancelled when it ends and
--     their upstream connections are closed, not leaked.
-- Query: budget (seconds, default 0.3), and any service's own ?delay= can be
-- forced with weather=, news=, stocks= (seconds).
local moonring = require "moonring"
local http = require "moonring.http"
local cjson = require "cjson"
local query = require "_lib.query"

local SERVICES = { "weather", "news", "stocks" }

return function(req)
  local q = query(req)
  local budget = math.min(tonumber(q.budget) or 0.3, 10)
  local deadline = moonring.timeout(moonring.budget(budget))
  -- the upstreams: this same server's /svc/* routes, unless UPSTREAM is set
  local base = os.getenv("UPSTREAM") or ("http://127.0.0.1:" .. req.server_port)
  local started = moonring.now()

  local arrived = moonring.channel(#SERVICES)
  for _, name in ipairs(SERVICES) do
    moonring.spawn(function()
      local url = base .. "/svc/" .. name .. (q[name] and ("?delay=" .. q[name]) or "")
      local res, err = http.get(url, { timeout = deadline:remaining() })
      if res and res.status ~= 200 then res, err = nil, "status " .. res.status end
      arrived:put({ name = name, res = res, err = err, took = moonring.now() - started })
    end)
  end

  local out = { budget = budget, services = {} }
  for _ = 1, #SERVICES do
    local op, got = moonring.select{ arrived, deadline }
    if op == deadline then break end
    out.services[got.name] = got.res
      and { status = "ok", took = got.took, answer = cjson.decode(got.res.body).data }
      or { status = "failed", took = got.took, error = got.err }
  end
  for _, name in ipairs(SERVICES) do
    out.services[name] = out.services[name] or { status = "timed out" }
  end
  out.took = moonring.now() - started
  return { status = 200, headers = { ["content-type"] = "application/json" },
           body = cjson.encode(out) }
end
