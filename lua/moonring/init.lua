-- require "moonring": the Lua API handlers use. The C half is moonring.core.
local core = require "moonring.core"

local moonring = {
  version = core.version,
  sleep = core.sleep,     -- moonring.sleep(seconds): parks this request only
}

-- The routes of the running app: { { path =, file =, methods = }, ... }.
function moonring.routes()
  return require("moonring.app").routes()
end

return moonring
