-- GET /events — the event stream a page opens with new EventSource("/events").
-- Each subscriber gets a channel from the room; sse.response writes every
-- event put on it, plus a ":" heartbeat comment every 15 s. When the request
-- ends (the tab closed, or the room dropped a slow reader) on_close takes the
-- channel out of the room.
local sse = require "moonring.sse"
local chat = require "_lib.chat"

return {
  GET = function(req)
    -- A browser that reconnects sends the id of the last event it got.
    local ch = chat.subscribe(sse.last_event_id(req))
    req.on_close(function() chat.unsubscribe(ch) end)
    return sse.response(req, ch, { heartbeat = 15, retry = 2000 })
  end,
}
