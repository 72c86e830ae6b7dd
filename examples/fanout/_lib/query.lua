-- query(req) → the query string's parameters as a table (last one wins).
return function(req)
  local q = {}
  for k, v in (req.query_string or ""):gmatch("([^&=]+)=([^&]*)") do q[k] = v end
  return q
end
