-- GET /limited?work=0.5 — at most 2 requests run this handler at once, 2 more
-- may wait up to 1 s for a turn, and the rest are shed at once with 503 and
-- Retry-After: 1. moonring.limit is middleware: it wraps the handler below,
-- an async one, like any other.
local moonring = require "moonring"
local util = require "_lib.util"

local limit = moonring.limit { concurrency = 2, queue = 2, queue_timeout = 1 }

local running = 0   -- one server, one Lua state: a plain counter is safe

return limit(function(req, respond, raise)
  local work = util.seconds(util.query(req).work, 0.5)
  running = running + 1
  local with = running
  moonring.spawn(function()
    local ok, err = pcall(moonring.sleep, work)   -- pretend to work
    running = running - 1
    if not ok then error(err, 0) end              -- "cancelled": client left
    respond(util.json(200, { worked = work, running = with }))
  end)
end)
