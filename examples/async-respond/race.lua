-- GET /race?a=0.3&b=0.1&timeout=0.5 — asks two mirrors at once and answers
-- with whichever is first; if neither answers before the timeout, 504.
-- A plain function(req) handler may wait too: select parks only this request.
local moonring = require "moonring"
local util = require "_lib.util"

-- Starts a call in its own task; its result arrives on the channel.
-- Buffered (size 1), so the loser's put never waits for a taker.
local function ask(name, delay)
  local ch = moonring.channel(1)
  local task = moonring.spawn(function() ch:put(util.upstream(name, delay)) end)
  return ch, task
end

return function(req)
  local q = util.query(req)
  local a, task_a = ask("mirror-a", util.seconds(q.a, 0.3))
  local b, task_b = ask("mirror-b", util.seconds(q.b, 0.1))
  local limit = util.seconds(q.timeout, 0.5)
  local deadline = moonring.timeout(limit)

  local first, result = moonring.select { a, b, deadline }
  -- Stop the other call now (the request's tasks would be cancelled when
  -- it ends anyway).
  task_a:cancel()
  task_b:cancel()

  if first == deadline then
    return util.json(504, { error = "no mirror answered in time", timeout = limit })
  end
  return util.json(200, { winner = result.upstream, took = result.took, answer = result.answer })
end
