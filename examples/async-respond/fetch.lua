-- GET /fetch?delay=0.2[&fail=1] — an async handler: it starts the work in
-- a task of its own and returns at once; the task answers later with
-- respond(response), or fails the request with raise(err).
local moonring = require "moonring"
local util = require "_lib.util"

return function(req, respond, raise)
  local q = util.query(req)
  local delay = util.seconds(q.delay, 0.2)
  moonring.spawn(function()
    local data, err = util.upstream("users", delay, q.fail)
    if not data then return raise(err) end    -- 500, logged with the route
    respond(util.json(200, { fetched = data }))
  end)
  -- Returning does not answer: the request stays open until respond/raise
  -- (or --request-timeout, 60 s by default, answers 504).
end
