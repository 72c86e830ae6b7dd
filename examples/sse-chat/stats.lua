-- GET /stats — how many are listening, how many messages, how many slow
-- subscribers were dropped.
local cjson = require "cjson"
local chat = require "_lib.chat"

return {
  GET = function(req)
    return {
      status = 200,
      headers = { ["content-type"] = "application/json" },
      body = cjson.encode(chat.stats()) .. "\n",
    }
  end,
}
