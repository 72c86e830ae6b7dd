-- /hang : waits far past --request-timeout (504), or until the client leaves
-- (cancelled); req.on_close runs either way.
local moonring = require "moonring"

return function(req)
  req.on_close(function(reason) end)
  moonring.sleep(10)
  return { body = "woke\n" }
end
