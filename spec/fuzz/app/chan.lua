-- /chan : a task feeds the request body into a channel that is the response
-- body; the handler waits on select (the body channel, a timeout), joins a
-- second task, and reads through a coroutine.wrap generator that sleeps.
local moonring = require "moonring"

return function(req)
  local out = moonring.channel(2)
  local ticks = coroutine.wrap(function()
    for i = 1, 2 do
      moonring.sleep(0)
      coroutine.yield("tick " .. i .. "\n")
    end
  end)
  local done = moonring.channel(1)
  local helper = moonring.spawn(function(n) moonring.sleep(0); done:put(n); return n * 2 end, 21)
  local feeder = moonring.spawn(function()
    out:put(ticks())
    if req.body then
      while true do
        local piece = req.body:read()
        if not piece then break end
        if not out:put(piece) then return end
      end
    end
    out:put(ticks())
    out:put(tostring(helper:join()) .. "\n")
    out:close()
  end)
  local op = moonring.select { done, moonring.timeout(0.001) }
  if req.query_string == "cancel" then feeder:cancel() out:close() end
  return { status = 200, headers = { ["x-op"] = op == done and "done" or "timeout" }, body = out }
end
