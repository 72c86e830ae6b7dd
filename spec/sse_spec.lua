-- Server-Sent Events (require "moonring.sse"): the event-stream headers and
-- wire format, heartbeats, Last-Event-ID, a channel as the source with
-- fan-out to several subscribers, the stream ending when the client leaves,
-- and sse.encode refusing line breaks where they would forge fields.
local helper = require "helper"

local APP = {
  ["index.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
  ["_lib/state.lua"] = [[return { send = {}, on_close = {}, started = {} }]],
  ["_lib/hub.lua"] = [[return { subs = {} }]],
  ["state.lua"] = helper.STATE_ROUTE,
  ["events.lua"] = [[
local sse = require "moonring.sse"
return function(req)
  return sse.response(req, function(events)
    assert(events:send { id = 7, event = "greet", retry = 2500, data = "line one\nline two\nline three" })
    assert(events:send "just data")
    assert(events:send { data = "crlf\r\nand\rcr" })
    events:comment("a note")
  end, { heartbeat = 0, retry = 3000, headers = { ["x-extra"] = "e-19d2" } })
end
]],
  ["heartbeat.lua"] = [[
local moonring = require "moonring"
local sse = require "moonring.sse"
return function(req)
  return sse.response(req, function(events)
    events:send "start"
    moonring.sleep(0.55)
    events:send "end"
  end, { heartbeat = 0.1 })
end
]],
  ["direct.lua"] = [[
local sse = require "moonring.sse"
local state = require "_lib.state"
local hub = require "_lib.hub"
hub.direct = {}
return {
  GET = function(req)
    return sse.response(req, function(events)
      hub.direct[events] = true
      req.on_close(function() hub.direct[events] = nil end)
      events:wait()                      -- until the client leaves or close()
      state.started.waited = (state.started.waited or 0) + 1
    end, { heartbeat = 0 })
  end,
  POST = function(req)
    local n, data = 0, req.body and req.body:read("a")
    for events in pairs(hub.direct) do
      if req.query_string == "end" then events:close()
      elseif req.query_string == "count" or events:try_send(data) then n = n + 1 end
    end
    return { body = tostring(n) }
  end,
}
]],
  ["lastid.lua"] = [[
local sse = require "moonring.sse"
return function(req)
  return sse.response(req, function(events)
    events:send("last=" .. tostring(events.last_event_id) .. ";helper=" .. tostring(sse.last_event_id(req)))
  end, { heartbeat = 0 })
end
]],
  -- fan-out: every subscriber has a channel in the hub
  ["subscribe.lua"] = [[
local moonring = require "moonring"
local sse = require "moonring.sse"
local hub = require "_lib.hub"
return function(req)
  local ch = moonring.channel(16)
  hub.subs[ch] = true
  req.on_close(function() hub.subs[ch] = nil end)
  return sse.response(req, ch, { heartbeat = 0 })
end
]],
  ["subscribers.lua"] = [[
local hub = require "_lib.hub"
return function(req)
  local n = 0
  for _ in pairs(hub.subs) do n = n + 1 end
  return { status = 200, body = tostring(n) }
end
]],
  -- POST: the body goes to every subscriber (?event=NAME: as that event;
  -- ?end: their channels are closed)
  ["publish.lua"] = [[
local hub = require "_lib.hub"
return function(req)
  local data = req.body and req.body:read("a") or ""
  local qs = req.query_string or ""
  local name = qs:match("event=(%w+)")
  local n = 0
  for ch in pairs(hub.subs) do
    if qs:find("end", 1, true) then
      ch:close()
    else
      assert(ch:put(name and { event = name, data = data } or data))
    end
    n = n + 1
  end
  return { status = 200, body = tostring(n) }
end
]],
  -- sends until a send fails; records what the failed send returned and
  -- the on_close reason under ?KEY
  ["leave.lua"] = [[
local moonring = require "moonring"
local sse = require "moonring.sse"
local state = require "_lib.state"
return function(req)
  local key = req.query_string or "-"
  req.on_close(function(reason) state.on_close[key] = reason end)
  return sse.response(req, function(events)
    local n = 0
    while true do
      n = n + 1
      local ok, err = events:send("tick " .. n)
      if not ok then
        state.send[key] = { ok = tostring(ok), err = tostring(err) }
        return
      end
      pcall(moonring.sleep, 0.05)
    end
  end, { heartbeat = 0 })
end
]],
  -- only heartbeats, the source waits
  ["quiet.lua"] = [[
local moonring = require "moonring"
local sse = require "moonring.sse"
local state = require "_lib.state"
return function(req)
  local key = req.query_string or "-"
  req.on_close(function(reason) state.on_close[key] = reason end)
  return sse.response(req, function(events)
    state.started[key] = true
    moonring.sleep(30)
  end, { heartbeat = 0.1 })
end
]],
  -- ?FIELD: encodes an event whose FIELD holds a line break, under pcall
  ["encode.lua"] = [[
local sse = require "moonring.sse"
return function(req)
  local field, sep = (req.query_string or ""):match("^(%a+)&?(%a*)$")
  local ev = { data = "x" }
  ev[field] = sep == "cr" and "a\rb" or "a\nb"
  local ok, err = pcall(sse.encode, ev)
  return { status = 200, body = tostring(ok) .. " " .. tostring(err) }
end
]],
  ["encodeok.lua"] = [[
local sse = require "moonring.sse"
return function(req)
  return { status = 200, body = sse.encode { id = "i-1", event = "e", data = "d1\nd2" } .. sse.encode "plain" }
end
]],
  ["encoderaw.lua"] = [[
local sse = require "moonring.sse"
return function(req)
  return { status = 200, body = sse.encode { event = "evil\ndata: forged", data = "x" } }
end
]],
}

local function with_app(args, fn)
  return helper.with_server({ files = APP, args = args or {} }, fn)
end

local state_of = helper.state

local wait_for = helper.eventually

local wait_state = helper.wait_state

-- GET path (Connection: close) and the parsed, complete response.
local function fetch(server, path, headers)
  local req = helper.build_request(server.port, "GET", path, { headers = headers })
  local text, info = helper.raw(server.port, req, { timeout = 4 * helper.slow })
  assert.is_true(info.closed, "the stream did not end: " .. text)
  local list, err = helper.parse(text)
  assert.is_nil(err, tostring(err) .. "; raw: " .. text)
  assert.are.equal(1, #list, "raw: " .. text)
  return list[1]
end

-- Reads the head of a response that is still streaming; returns its status
-- line and the first line of the body after it that matches `want`.
local function read_head(c, want)
  c.sock:settimeout(2 * helper.slow)
  local status = c.sock:receive("*l")
  repeat
    local line, err = c.sock:receive("*l")
    assert(line, "head cut short: " .. tostring(err))
  until line == ""
  local found
  if want then
    repeat
      local line, err = c.sock:receive("*l")
      assert(line, "no " .. want .. " in the stream: " .. tostring(err))
      if line:find(want, 1, true) then found = line end
    until found
  end
  return status, found
end

-- The events of an event-stream body ("\n\n"-separated blocks).
local function blocks(body)
  local out = {}
  for block in body:gmatch("(.-)\n\n") do out[#out + 1] = block end
  return out
end

describe("sse.response", function()
  it("sends the event-stream headers and encodes id, event, retry and multi-line data", function()
    with_app(nil, function(server)
      local res = fetch(server, "/events")
      assert.are.equal(200, res.status)
      assert.are.equal("text/event-stream", res.headers["content-type"])
      assert.are.equal("no-cache", res.headers["cache-control"])
      assert.are.equal("no", res.headers["x-accel-buffering"])
      assert.are.equal("e-19d2", res.headers["x-extra"])
      assert.is_true(res.chunked)
      assert.are.equal(
        "retry: 3000\n\n"
        .. "id: 7\nevent: greet\nretry: 2500\ndata: line one\ndata: line two\ndata: line three\n\n"
        .. "data: just data\n\n"
        .. "data: crlf\ndata: and\ndata: cr\n\n"
        .. ":a note\n\n",
        res.body)
    end)
  end)

  it("sends a heartbeat comment every heartbeat period", function()
    with_app(nil, function(server)
      local res = fetch(server, "/heartbeat")
      local list = blocks(res.body)
      assert.are.equal("data: start", list[1], res.body)
      assert.are.equal("data: end", list[#list], res.body)
      local beats = 0
      for i = 2, #list - 1 do
        assert.are.equal(":", list[i], "unexpected block between the events: " .. res.body)
        beats = beats + 1
      end
      -- 0.55 s at one beat per 0.1 s: about 5
      assert.is_true(beats >= 3 and beats <= 7, string.format("%d heartbeats in 0.55 s: %q", beats, res.body))
    end)
  end)

  it("hands the Last-Event-ID request header to the source as events.last_event_id", function()
    with_app(nil, function(server)
      local res = fetch(server, "/lastid", { ["Last-Event-ID"] = "ev-42" })
      assert.are.equal("data: last=ev-42;helper=ev-42\n\n", res.body)
      res = fetch(server, "/lastid")
      assert.are.equal("data: last=nil;helper=nil\n\n", res.body)
    end)
  end)
end)

describe("sse.response with a channel as the source", function()
  it("fans events put by another request out to every subscriber and ends when the channel closes", function()
    with_app(nil, function(server)
      local subs = {}
      for i = 1, 2 do
        subs[i] = helper.connect(server.port)
        subs[i]:send("GET /subscribe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      end
      assert.is_truthy(wait_for(function()
        return helper.get(server.port, "/subscribers").body == "2"
      end, 3 * helper.slow), "the two subscribers did not register")
      local function publish(qs, body)
        local res = helper.request(server.port, "POST", "/publish" .. qs, { body = body })
        assert.are.equal(200, res.status, res.raw)
        assert.are.equal("2", res.body)
      end
      publish("", "hello")
      publish("?event=note", "world\nagain")
      publish("?end", "")
      for i, c in ipairs(subs) do
        local text, ended = c:read_until_close(3 * helper.slow)
        c:close()
        assert.are.equal("closed", ended, "subscriber " .. i .. ": the stream did not end: " .. text)
        local list, err = helper.parse(text)
        assert.is_nil(err, "subscriber " .. i .. ": " .. tostring(err) .. "; raw: " .. text)
        assert.are.equal("text/event-stream", list[1].headers["content-type"])
        assert.are.equal("data: hello\n\nevent: note\ndata: world\ndata: again\n\n", list[1].body,
          "subscriber " .. i)
      end
      -- their on_close callbacks unregistered them
      assert.is_truthy(wait_for(function()
        return helper.get(server.port, "/subscribers").body == "0"
      end, 2 * helper.slow), "subscribers still registered after their streams ended")
    end)
  end)
end)

describe("fan-out by writing to each subscriber's events", function()
  it("delivers with events:try_send, and events:close() ends the waiting source", function()
    with_app(nil, function(server)
      local subs = {}
      for i = 1, 2 do
        subs[i] = helper.connect(server.port)
        subs[i]:send("GET /direct HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      end
      local function post(qs, body)
        return helper.request(server.port, "POST", "/direct" .. qs, { body = body or "x" }).body
      end
      assert.is_truthy(wait_for(function() return post("?count") == "2" end, 3 * helper.slow),
        "the two subscribers did not register")
      assert.are.equal("2", post("", "hello"))
      post("?end")
      for i, c in ipairs(subs) do
        local text, ended = c:read_until_close(3 * helper.slow)
        c:close()
        assert.are.equal("closed", ended, "subscriber " .. i .. ": the stream did not end: " .. text)
        local list, err = helper.parse(text)
        assert.is_nil(err, tostring(err) .. "; raw: " .. text)
        assert.are.equal("data: hello\n\n", list[1].body, "subscriber " .. i)
      end
      assert.are.equal(2, helper.state(server).started.waited)
    end)
  end)
end)

describe("an event stream whose client leaves", function()
  for _, how in ipairs { { "a reset", "reset" }, { "a FIN", "fin" } } do
    it("ends: the source's send returns nil and req.on_close runs (" .. how[1] .. ")", function()
      with_app(nil, function(server)
        local key = "leave-" .. how[2]
        local c = helper.connect(server.port)
        c:send("GET /leave?" .. key .. " HTTP/1.1\r\nHost: x\r\n\r\n")
        local status, line = read_head(c, "tick 1")
        assert.are.equal("HTTP/1.1 200 OK", status)
        assert.are.equal("data: tick 1", line)
        if how[2] == "reset" then c:reset() else c:shutdown("send") end
        local st, ok = wait_state(server, function(s) return s.send[key] and s.on_close[key] end, 2 * helper.slow)
        c:close()
        assert.is_true(ok, "the stream did not end after the client left: " .. require("pl.pretty").write(st))
        assert.are.equal("nil", st.send[key].ok)
        assert.is_truthy(st.send[key].err == "closed" or st.send[key].err == "cancelled",
          "send failed with " .. st.send[key].err)
        assert.are.equal("closed", st.on_close[key])
        helper.assert_serves(server.port, "/")
      end)
    end)
  end

  it("ends when only heartbeats were flowing", function()
    with_app(nil, function(server)
      local c = helper.connect(server.port)
      c:send("GET /quiet?q HTTP/1.1\r\nHost: x\r\n\r\n")
      local status, line = read_head(c, ":")
      assert.are.equal("HTTP/1.1 200 OK", status)
      assert.are.equal(":", line)
      c:reset()
      local st, ok = wait_state(server, function(s) return s.on_close.q end, 2 * helper.slow)
      assert.is_true(ok, "req.on_close did not run after the client left")
      assert.are.equal("closed", st.on_close.q)
      helper.assert_serves(server.port, "/")
    end)
  end)
end)

describe("sse.encode", function()
  it("encodes an event table and a string", function()
    with_app(nil, function(server)
      local res = helper.get(server.port, "/encodeok")
      assert.are.equal("id: i-1\nevent: e\ndata: d1\ndata: d2\n\ndata: plain\n\n", res.body)
    end)
  end)

  for _, case in ipairs { { "id", "LF" }, { "event", "LF" }, { "id&cr", "CR" }, { "event&cr", "CR" } } do
    it("raises for a " .. case[2] .. " in the " .. case[1]:match("%a+") .. " field", function()
      with_app(nil, function(server)
        local res = helper.get(server.port, "/encode?" .. case[1])
        assert.are.equal(200, res.status)
        assert.matches("^false ", res.body)
        assert.is_truthy(res.body:find("the " .. case[1]:match("%a+") .. " field cannot hold CR, LF or NUL", 1, true),
          res.body)
      end)
    end)
  end

  it("fails the request (500) when a handler encodes a forged field without pcall", function()
    with_app(nil, function(server)
      local res = helper.get(server.port, "/encoderaw")
      assert.are.equal(500, res.status)
      assert.is_nil(res.body:find("forged", 1, true))
      assert.is_truthy(server:wait_stderr("cannot hold CR, LF or NUL"), server:stderr_text())
    end)
  end)
end)
