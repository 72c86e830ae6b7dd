-- moonring app for `make bench`: GET /hello -> "Hello, World!" (13 bytes).
return function(req)
  return { status = 200, headers = { ["content-type"] = "text/plain" }, body = "Hello, World!" }
end
