-- Counters that survive reloads: moonring.state returns the same table
-- every time this module is loaded again. A background task started at top
-- level would run twice after a reload, so its on_reload hook stops it.
local moonring = require "moonring"

local stats = moonring.state("stats", { requests = 0, reloads = 0, ticks = 0 })

local ticker = moonring.background(function()
  while true do
    moonring.sleep(1)
    stats.ticks = stats.ticks + 1
  end
end)

moonring.on_reload(function()
  ticker:cancel()                    -- the new code starts its own
  stats.reloads = stats.reloads + 1
end)

return stats
