-- Shared by bench/app/events.lua and bench/app/publish.lua (a `_` file, so
-- not a route): the set of subscribers, each the `events` object of its
-- stream. Module level, so every request sees the same table.
local hub = {
  subscribers = {},   -- events -> true
  count = 0,
}

function hub.add(events)
  hub.subscribers[events] = true
  hub.count = hub.count + 1
end

function hub.remove(events)
  if hub.subscribers[events] then
    hub.subscribers[events] = nil
    hub.count = hub.count - 1
  end
end

return hub
