-- GET /: what to try.
local store = require "_lib.store"

return function(req)
  return {
    status = 200,
    headers = { ["content-type"] = "text/plain; charset=utf-8" },
    body = table.concat({
      "redis-counter: counters kept in Redis at " .. store.host .. ":" .. store.port,
      "",
      "  curl -X POST localhost:8080/counter/home     add one, answers the new count",
      "  curl localhost:8080/counter/home             read it",
      "  curl -X DELETE localhost:8080/counter/home   reset it",
      "",
    }, "\n"),
  }
end
