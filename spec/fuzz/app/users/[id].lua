-- /users/:id : a method table; params are percent-decoded.
return {
  GET = function(req)
    return { body = "user " .. req.params.id .. "\n" }
  end,
  POST = function(req)
    local body = req.body and req.body:read("a") or ""
    return { status = 201, headers = { location = "/users/" .. req.params.id }, body = body }
  end,
  DELETE = function(req)
    return { status = 204 }
  end,
}
