-- The body of every request's coroutine: run the app, then send what it
-- returned. A function body is pulled chunk by chunk here, inside the
-- coroutine, so it may wait between chunks; write() parks while the client
-- is slower than the producer and returns false once the client is gone.
local core = require "moonring.core"
local send, write, finish = core.send, core.write, core.finish

return function(app, req, handle)
  local body = send(handle, app(req))
  if body then
    while true do
      local chunk = body()
      if chunk == nil then break end
      if not write(handle, chunk) then return end
    end
    finish(handle)
  end
end
