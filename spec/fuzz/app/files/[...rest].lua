-- /files/*rest : a catch-all parameter.
return function(req)
  return { body = { "file ", req.params.rest, "\n" } }
end
