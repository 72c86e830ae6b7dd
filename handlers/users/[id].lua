-- /users/:id — a parameter from the file name, and a table of handlers by
-- method: GET and DELETE are served, other methods get 405 with Allow.
local users = { ["1"] = "ada", ["2"] = "grace", ["42"] = "arthur" }

return {
  GET = function(req)
    local name = users[req.params.id]
    if not name then
      return { status = 404, headers = { ["content-type"] = "text/plain" }, body = "no such user\n" }
    end
    return {
      status = 200,
      headers = { ["content-type"] = "text/plain; charset=utf-8" },
      body = "user " .. req.params.id .. " is " .. name .. "\n",
    }
  end,
  DELETE = function(req)
    users[req.params.id] = nil
    return { status = 204 }
  end,
}
