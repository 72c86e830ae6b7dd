-- /iter : an iterator-function body (chunked on 1.1, close-delimited on 1.0)
-- that waits a loop turn between chunks; ?fail raises after the head went out
-- (the connection is then reset).
local moonring = require "moonring"

return function(req)
  local n = 0
  local fail = req.query_string == "fail"
  return {
    headers = { ["content-type"] = "text/plain" },
    body = function()
      n = n + 1
      if n > 3 then return nil end
      if fail and n == 2 then error("iter failed") end
      moonring.sleep(0)
      return "chunk " .. n .. "\n"
    end,
  }
end
