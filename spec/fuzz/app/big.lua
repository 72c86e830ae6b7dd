-- /big : 96 KiB streamed in 1 KiB writes, far over --write-buffer (4k in the
-- fuzzer), so a client that does not read makes the writer park; ?try uses
-- out:try_write and waits a turn when the buffer is full.
local moonring = require "moonring"
local kib = string.rep("x", 1023) .. "\n"

return function(req)
  local try = req.query_string == "try"
  return {
    headers = { ["content-type"] = "text/plain" },
    body = moonring.stream(function(out)
      for _ = 1, 96 do
        if try then
          while true do
            local ok, err = out:try_write(kib)
            if ok then break end
            if err == "closed" then return end
            moonring.sleep(0)
          end
        elseif not out:write(kib) then
          return
        end
      end
    end),
  }
end
