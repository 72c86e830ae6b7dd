-- moonring app for `make bench`: GET /multiply?a=2&b=3 -> small HTML page with
-- the path and the product (after the public lua-server-benchmark's page).
-- The query is parsed the same way in bench/nginx.conf and bench/node-server.js.
return function(req)
  local args = {}
  local qs = req.query_string
  if qs then
    for k, v in string.gmatch(qs, "([^&=]+)=([^&]*)") do args[k] = v end
  end
  local a, b = tonumber(args.a) or 0, tonumber(args.b) or 0
  local body = "<html><body><p>Hello, World!</p><p>PATH=" .. req.uri ..
               "</p><p>RESULT: " .. a .. "*" .. b .. "=" .. math.floor(a * b) ..
               "</p></body></html>\n"
  return { status = 200, headers = { ["content-type"] = "text/html" }, body = body }
end
