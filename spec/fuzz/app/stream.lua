-- /stream : a streamed response (moonring.stream) that echoes the body piece
-- by piece as it arrives (req.body:read() between writes), then two chunks.
local moonring = require "moonring"

return function(req)
  return {
    status = 200,
    headers = { ["content-type"] = "application/octet-stream" },
    body = moonring.stream(function(out)
      if not out:write("start\n") then return end
      if req.body then
        while true do
          local piece = req.body:read()
          if not piece then break end
          if not out:write(piece) then return end
        end
      end
      moonring.sleep(0)
      out:write("end\n")
      out:close()
    end),
  }
end
