-- The chat room: who is listening, and the last messages. Not a route (its
-- name starts with "_"); the route files load it with require "_lib.chat".
-- Modules load once per server, so every request shares this one room.
--
-- Each subscriber (one open GET /events) owns a buffered channel. publish()
-- puts a message on every channel without ever waiting: a subscriber whose
-- channel is full is too slow to keep up, so it is dropped (its channel is
-- closed, its stream ends after what is buffered, and its browser reconnects
-- with Last-Event-ID and catches up from the history).
local moonring = require "moonring"
local cjson = require "cjson"

local HISTORY = 100      -- messages kept for replay
local BUFFER = 128       -- messages a subscriber may lag behind; > HISTORY, so
                         -- a full replay always fits in a fresh channel

local chat = {}

local subscribers = {}   -- channel -> true
local count = 0
local history = {}       -- the last HISTORY events, oldest first
local last_id = 0
local dropped = 0

-- Event ids are "<epoch>-<n>". The epoch changes when the server restarts,
-- so a browser that reconnects with an id from an earlier run gets the whole
-- history instead of being told it has seen message n already.
local epoch = string.format("%x", os.time())

local function event_id(n) return epoch .. "-" .. n end

-- The events to replay to a client that last saw `seen` (a Last-Event-ID,
-- or nil for a first visit: then it gets all the recent history).
local function missed(seen)
  local e, n = tostring(seen or ""):match("^(%x+)%-(%d+)$")
  n = tonumber(n)
  if e ~= epoch or not n or n > last_id then n = 0 end
  local out = {}
  for _, ev in ipairs(history) do
    if ev.n > n then out[#out + 1] = ev.sse end
  end
  return out
end

-- A new subscriber: its channel, already holding what it missed.
function chat.subscribe(last_event_id)
  local ch = moonring.channel(BUFFER)
  for _, ev in ipairs(missed(last_event_id)) do ch:put(ev) end  -- room: never waits
  subscribers[ch] = true
  count = count + 1
  return ch
end

-- Forget a subscriber and end its stream (once what it holds is sent).
function chat.unsubscribe(ch)
  if subscribers[ch] then
    subscribers[ch] = nil
    count = count - 1
  end
  ch:close()
end

-- Sends a message to everyone listening. Returns the stored message.
function chat.publish(name, text)
  last_id = last_id + 1
  local msg = { id = last_id, name = name, text = text, time = os.time() }
  local ev = { id = event_id(last_id), data = cjson.encode(msg) }
  history[#history + 1] = { n = last_id, sse = ev }
  if #history > HISTORY then table.remove(history, 1) end

  -- A put that would wait loses to a timeout that has already expired:
  -- select tries its ops in order and only waits when none is ready.
  local now = moonring.timeout(0)
  local slow = {}
  for ch in pairs(subscribers) do
    local done, ok = moonring.select { { ch, ev }, now }
    if done ~= ch or not ok then slow[#slow + 1] = ch end
  end
  for _, ch in ipairs(slow) do
    chat.unsubscribe(ch)
    dropped = dropped + 1
  end
  return msg
end

function chat.stats()
  return { subscribers = count, messages = last_id, dropped = dropped }
end

return chat
