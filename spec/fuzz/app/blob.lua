-- /blob : one string body of 64 KiB or more (?n extra KiB, at most 192),
-- which the server writes without copying, keeping the Lua string alive
-- until the socket has taken it (response.c KEEP_MIN, conn_write_kept).
local base = string.rep("0123456789abcdef", 4096)

return function(req)
  local extra = math.min(tonumber(req.query_string or "") or 1, 192)
  return { headers = { ["content-type"] = "text/plain" }, body = base .. string.rep("z", extra * 1024) }
end
