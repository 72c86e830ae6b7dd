-- GET / : the plainest sync handler.
return function(req)
  return { status = 200, headers = { ["content-type"] = "text/plain" }, body = "hello\n" }
end
