-- The body of every request's main task: build the request table, run the
-- app, send what it answered. A streamed body is driven here, inside the
-- task, so it may wait between chunks: an iterator function is pulled chunk
-- by chunk; a custom kind (a value whose metatable has __moonring_body, as
-- moonring.stream and channels do) is handed the writer.
local core = require "moonring.core"
local request, send, write, finish, writer = core.request, core.send, core.write, core.finish, core.writer

-- A channel as a body: every value put on it is a chunk, until it is closed.
getmetatable(core.channel()).__moonring_body = function(ch, out)
  while true do
    local chunk = ch:take()
    if chunk == nil then return end
    if type(chunk) ~= "string" then
      error("bad response: a channel body produced a " .. type(chunk) .. ", expected a string", 0)
    end
    if not out:write(chunk) then return end
  end
end

-- serve(app) → the function every request's main task runs with its
-- handle (the app is an upvalue: one lookup less per request).
return function(app)
  return function(handle)
    local req = request(handle)
    local res = app(req)
    local body, method = send(handle, res)
    if not body then return end          -- complete already
    if method then
      method(body, writer(handle), res)
    else
      while true do
        local chunk = body()
        if chunk == nil then break end
        if not write(handle, chunk) then return end
      end
    end
    finish(handle)
  end
end
