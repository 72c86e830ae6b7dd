-- moonring app for `make bench`: GET /sleep waits 100 ms on a timer (parks the
-- request's coroutine, not the loop), then answers.
local moonring = require "moonring"

return function(req)
  moonring.sleep(0.1)
  return { status = 200, headers = { ["content-type"] = "text/plain" }, body = "slept 100 ms\n" }
end
