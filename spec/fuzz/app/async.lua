-- /async : an async handler; a task it spawns reads the body, waits a loop
-- turn, and responds. ?raise fails it through raise().
local moonring = require "moonring"

return function(req, respond, raise)
  moonring.spawn(function()
    local body = req.body and req.body:read("a") or ""
    moonring.sleep(0)
    if req.query_string == "raise" then
      raise("raised")
    else
      respond({ status = 201, body = "async " .. #body .. "\n" })
    end
  end)
end
