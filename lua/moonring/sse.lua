-- Server-Sent Events (text/event-stream) on a moonring stream.
--
--   local sse = require "moonring.sse"
--   return function(req)
--     return sse.response(req, function(events)
--       events:send { event = "tick", id = 1, data = "line one\nline two" }
--       events:send "just data"                 -- true, or nil + "closed"
--     end, { heartbeat = 15 })
--   end
--
-- The source is a function(events) that sends events until it returns, or a
-- channel: every value put on it (a string, or an event table) is sent until
-- it is closed. For fan-out to many clients, keep each subscriber's `events`
-- in a table, encode each event once (sse.encode) and write it to every
-- subscriber with events.out:try_write(text), which never waits; the source
-- itself just calls events:wait(). A heartbeat comment goes out every `heartbeat` seconds so
-- proxies keep the connection and a client that left is noticed. When the
-- client leaves, sends return nil, "closed" (or "cancelled") and waits raise
-- "cancelled": the stream ends cleanly, and req.on_close callbacks run.
local moonring = require "moonring"

local sse = {}

local function clean(v, what)
  local s = tostring(v)
  if s:find("[\r\n%z]") then error("sse: the " .. what .. " field cannot hold CR, LF or NUL", 3) end
  return s
end

-- encode(event) → the text of one event. An event is a string (its data)
-- or a table with data, event, id, retry (milliseconds) and comment.
function sse.encode(ev)
  if type(ev) ~= "table" then ev = { data = ev } end
  local out = {}
  if ev.comment ~= nil then
    for line in (tostring(ev.comment) .. "\n"):gmatch("([^\r\n]*)\r?\n") do
      out[#out + 1] = ":" .. line .. "\n"
    end
  end
  if ev.id ~= nil then out[#out + 1] = "id: " .. clean(ev.id, "id") .. "\n" end
  if ev.event ~= nil then out[#out + 1] = "event: " .. clean(ev.event, "event") .. "\n" end
  if ev.retry ~= nil then
    local ms = tonumber(ev.retry)
    if not ms or ms < 0 or ms % 1 ~= 0 then error("sse: retry must be whole milliseconds", 2) end
    out[#out + 1] = "retry: " .. string.format("%d", ms) .. "\n"
  end
  if ev.data ~= nil then
    -- multi-line data: one data: line per line (CRLF, CR and LF all end one)
    local data = tostring(ev.data):gsub("\r\n", "\n"):gsub("\r", "\n")
    for line in (data .. "\n"):gmatch("([^\n]*)\n") do out[#out + 1] = "data: " .. line .. "\n" end
  end
  if #out == 0 then error("sse: an event needs data, event, id, retry or a comment", 2) end
  out[#out + 1] = "\n"
  return table.concat(out)
end

-- The Last-Event-ID a reconnecting client sent, or nil.
function sse.last_event_id(req)
  return req.headers and req.headers["last-event-id"]
end

local Events = {}
Events.__index = Events

-- events:send(event) → true, or nil and "closed" once the client is gone.
function Events:send(ev)
  return self.out:write(sse.encode(ev))
end

-- events:try_send(event) → true; false, "full" (not sent) while the client
-- is behind by more than --write-buffer; nil, "closed". Never waits.
function Events:try_send(ev)
  return self.out:try_write(sse.encode(ev))
end

function Events:comment(text)
  return self.out:write(sse.encode { comment = text or "" })
end

-- events:wait(): waits until the client leaves or events:close() is called:
-- for a stream others write to (fan-out), whose source has nothing else to do.
function Events:wait()
  if not self.done then self.done = moonring.channel() end
  self.done:take()
end

function Events:close()
  self.out:close()
  if self.done then self.done:close() end
end

-- response(req, source, opts) → a response table whose body is the stream.
-- opts: heartbeat (seconds, default 15; false or 0: none), retry (ms, sent
-- first), status (200), headers (added to the SSE ones).
function sse.response(req, source, opts)
  opts = opts or {}
  local is_channel = type(source) == "userdata" and tostring(source):find("^moonring%.channel")
  if type(source) ~= "function" and not is_channel then
    error("sse.response: the source must be a function(events) or a channel", 2)
  end
  local heartbeat = opts.heartbeat
  if heartbeat == nil then heartbeat = 15 end
  local headers = {
    ["content-type"] = "text/event-stream",
    ["cache-control"] = "no-cache",
    ["x-accel-buffering"] = "no",           -- nginx in front: do not buffer
  }
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  local last_id = sse.last_event_id(req)
  return {
    status = opts.status or 200,
    headers = headers,
    body = moonring.stream(function(out)
      local events = setmetatable({ out = out, last_event_id = last_id }, Events)
      if opts.retry then events:send { retry = opts.retry } end
      if heartbeat and heartbeat > 0 then
        moonring.spawn(function()
          while true do
            moonring.sleep(heartbeat)
            if not out:write(":\n\n") then return end
          end
        end)
      end
      if is_channel then
        while true do
          local ev = source:take()
          if ev == nil then return end
          if not events:send(ev) then return end
        end
      end
      return source(events)
    end),
  }
end

return sse
