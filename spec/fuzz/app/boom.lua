-- /boom : the handler raises (500, the connection stays usable).
return function(req)
  error("boom")
end
