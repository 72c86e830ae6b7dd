-- GET / — what to try.
local TEXT = [[
moonring async-respond example. Try:

  curl -s localhost:8080/fetch                    async handler, answered from a task
  curl -s 'localhost:8080/fetch?fail=1'           raise(err) → 500
  curl -s 'localhost:8080/race?a=0.3&b=0.1'       first of two mirrors wins
  curl -s 'localhost:8080/race?a=2&b=3&timeout=0.5'   the timeout wins → 504
  curl -s 'localhost:8080/limited?work=2'         2 at a time, 2 queued, the rest 503
  curl -si localhost:8080/timed                   middleware: x-response-time header
  curl -s 'localhost:8080/timed?fail=1'           middleware's error hook → 502
]]

return function(req)
  return {
    status = 200,
    headers = { ["content-type"] = "text/plain; charset=utf-8" },
    body = TEXT,
  }
end
