-- GET /hello — the smallest handler: a function from request to response.
return function(req)
  return {
    status = 200,
    headers = { ["content-type"] = "text/plain; charset=utf-8" },
    body = "Hello from moonring!\n",
  }
end
