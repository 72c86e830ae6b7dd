-- moonring app for `make bench`: GET /stream?mib=N streams N MiB (default
-- 1024) as 64 KiB chunks of one precomputed string, through moonring.stream:
-- out:write parks while the client is behind (the server's backpressure), and
-- returns nil once the client is gone. Same chunk and count in
-- bench/nginx.conf and bench/node-server.js.
local moonring = require "moonring"

local CHUNK = string.rep("0123456789abcdef", 4096)   -- 64 KiB

return function(req)
  local mib = tonumber(req.query_string and req.query_string:match("mib=(%d+)")) or 1024
  local chunks = mib * 16
  return {
    status = 200,
    headers = { ["content-type"] = "application/octet-stream" },
    body = moonring.stream(function(out)
      for _ = 1, chunks do
        if not out:write(CHUNK) then return end
      end
    end),
  }
end
