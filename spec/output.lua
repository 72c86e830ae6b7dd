-- busted output for `make test`: busted's usual terminal output, then one
-- plain closing line, "N passed, N failed", that CI and people can read the
-- same way whatever the runner (errors count as failed; pending is added
-- as ", N skipped" when there is any).
return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.utfTerminal")(options)
  busted.subscribe({ "suite", "end" }, function()
    local failed = handler.failuresCount + handler.errorsCount
    local line = string.format("%d passed, %d failed", handler.successesCount, failed)
    if handler.pendingsCount > 0 then line = line .. string.format(", %d skipped", handler.pendingsCount) end
    io.write("\n", line, "\n")
    io.flush()
    return nil, true
  end)
  return handler
end
