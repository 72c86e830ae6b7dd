-- /echo : reads the whole body (req.body:read("a")) and answers with what it
-- saw of the request. ?head answers before reading the body, leaving it to
-- be discarded by the server.
return function(req)
  local n = 0
  for _ in pairs(req.headers) do n = n + 1 end
  local body = ""
  if req.body and req.query_string ~= "head" then
    local err
    body, err = req.body:read("a")
    if not body then return { status = 400, body = "read: " .. tostring(err) .. "\n" } end
  end
  return {
    status = 200,
    headers = { ["content-type"] = "text/plain", ["x-headers"] = n, ["x-route"] = req.route },
    body = { req.request_method, " ", req.uri, "?", req.query_string or "", " ", req.protocol,
             " ", req.server_name or "", "\n", body },
  }
end
