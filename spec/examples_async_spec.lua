-- The example apps that show the async API (examples/sse-chat and
-- examples/async-respond), served by the real binary from their own
-- directories and checked over real sockets. The chat is also driven in a
-- real browser: Debian's chromium, headless, through playwright-core
-- (spec/browser/chat.js; scripts/setup.sh installs both). A missing browser
-- fails the spec: it is never skipped.
local helper = require "helper"
local socket = require "socket"
local cjson = require "cjson"

local q = helper.shell_quote

-- Serves examples/NAME, runs fn(server), and then checks that the server
-- logged no error or warning (unless `expect_errors`).
local function with_example(name, fn, expect_errors)
  return helper.with_server({ app = "examples/" .. name }, function(server)
    fn(server)
    if not expect_errors then
      local log = server:stderr_text()
      assert.is_falsy(log:find("[error]", 1, true), log)
      assert.is_falsy(log:find("[warn]", 1, true), log)
    end
  end)
end

local function json(res)
  local ok, value = pcall(cjson.decode, res.body)
  if not ok then error("not JSON: " .. string.format("%q", res.raw or res.body), 2) end
  return value
end

local function post(port, path, body, ctype, opts)
  opts = opts or {}
  opts.body = body
  opts.headers = { ["content-type"] = ctype }
  return helper.request(port, "POST", path, opts)
end

local eventually = helper.eventually

---------------------------------------------------------------------------
-- An event-stream client on a raw socket: the response head, then the
-- chunked body decoded as it arrives, then the events in it.
---------------------------------------------------------------------------

local Stream = {}
Stream.__index = Stream

-- Opens GET `path` and reads the response head. opts.headers: extra request
-- headers; opts.rcvbuf: a small receive buffer (a slow reader).
local function open_stream(port, path, opts)
  opts = opts or {}
  local conn = helper.connect(port, { rcvbuf = opts.rcvbuf })
  local headers = { { "Accept", "text/event-stream" } }
  for k, v in pairs(opts.headers or {}) do headers[#headers + 1] = { k, v } end
  assert(conn:send(helper.build_request(port, "GET", path, { headers = headers, close = false })))
  local s = setmetatable({ conn = conn, sock = conn.sock, raw = "", buf = "", ended = false }, Stream)
  s:read_head()
  return s
end

function Stream:read_head(timeout)
  self.sock:settimeout(timeout or 5 * helper.slow)
  local status = assert(self.sock:receive("*l"))
  self.status = tonumber(status:match("^HTTP/1%.1 (%d+)"))
  self.headers = {}
  while true do
    local line = assert(self.sock:receive("*l"))
    if line == "" then break end
    local k, v = line:match("^([^:]+):%s*(.-)%s*$")
    self.headers[k:lower()] = v
  end
end

-- Waits up to `timeout` (0: not at all) for bytes, and takes what is there.
-- true if it got any.
function Stream:fill(timeout)
  if not self.sock:dirty() then            -- nothing left in LuaSocket's buffer
    local ready = socket.select({ self.sock }, nil, timeout)
    if #ready == 0 then return false end
  end
  self.sock:settimeout(0)
  local data, err, partial = self.sock:receive(8192)
  local got = data or partial
  if got and #got > 0 then self.raw = self.raw .. got end
  if not data and err ~= "timeout" then self.closed = true end
  return got ~= nil and #got > 0
end

-- Moves the complete chunks of self.raw into self.buf (the event text).
function Stream:decode()
  while not self.ended do
    local eol = self.raw:find("\r\n", 1, true)
    if not eol then return end
    local n = tonumber(self.raw:sub(1, eol - 1):match("^(%x+)") or "", 16)
    assert(n, "bad chunk size line " .. string.format("%q", self.raw:sub(1, eol - 1)))
    if n == 0 then self.ended = true return end
    if #self.raw < eol + 1 + n + 2 then return end
    assert(self.raw:sub(eol + 2 + n, eol + 3 + n) == "\r\n", "missing CRLF after a chunk")
    self.buf = self.buf .. self.raw:sub(eol + 2, eol + 1 + n)
    self.raw = self.raw:sub(eol + 4 + n)
  end
end

-- The next event with data (comments and retry-only blocks skipped) as
-- { id =, data =, json = decoded data }, or nil and "timeout", "ended"
-- (the terminating chunk came) or "closed". timeout 0: only what is there.
function Stream:next_event(timeout)
  local deadline = helper.now() + (timeout or 5 * helper.slow)
  while true do
    local block, rest = self.buf:match("^(.-)\n\n(.*)$")
    if block then
      self.buf = rest
      local ev = {}
      for line in (block .. "\n"):gmatch("([^\n]*)\n") do
        local field, value = line:match("^([^:]+): ?(.*)$")
        if field == "data" then ev.data = ev.data and (ev.data .. "\n" .. value) or value
        elseif field == "id" then ev.id = value end
      end
      if ev.data then
        ev.json = cjson.decode(ev.data)
        return ev
      end
    elseif self.ended then return nil, "ended"
    elseif self.closed then return nil, "closed"
    else
      local got = self:fill(math.max(0, deadline - helper.now()))
      if got then self:decode()
      elseif helper.now() >= deadline then return nil, "timeout" end
    end
  end
end

-- Reads every event already there (waiting at most `timeout` for each).
function Stream:drain(timeout)
  local out = {}
  while true do
    local ev = self:next_event(timeout)
    if not ev then return out end
    out[#out + 1] = ev
  end
end

function Stream:close()
  self.conn:close()
end

---------------------------------------------------------------------------
-- examples/sse-chat
---------------------------------------------------------------------------

local FORM = "application/x-www-form-urlencoded"

local function stats(port)
  return json(helper.get(port, "/stats"))
end

local function say(port, name, text)
  local res = post(port, "/send", "name=" .. name .. "&text=" .. text, FORM)
  assert.are.equal(201, res.status, res.raw)
  return json(res)
end

describe("examples/sse-chat", function()
  it("serves the chat page, which subscribes with EventSource and escapes with textContent", function()
    with_example("sse-chat", function(server)
      local res = helper.get(server.port, "/")
      assert.are.equal(200, res.status)
      assert.are.equal("text/html; charset=utf-8", res.headers["content-type"])
      assert.is_truthy(res.body:find('new EventSource("/events")', 1, true))
      assert.is_truthy(res.body:find('fetch("/send"', 1, true))
      assert.is_truthy(res.body:find("textContent", 1, true))
      assert.is_falsy(res.body:find("innerHTML", 1, true))
    end)
  end)

  it("accepts a message as a form or as JSON and answers 201 with it", function()
    with_example("sse-chat", function(server)
      local a = say(server.port, "ann", "hello+%3Cb%3Eworld%3C%2Fb%3E+%26+more")
      assert.are.same({ 1, "ann", "hello <b>world</b> & more" }, { a.id, a.name, a.text })
      local res = post(server.port, "/send", cjson.encode { name = "bob", text = "two\nlines" },
        "application/json")
      assert.are.equal(201, res.status)
      local b = json(res)
      assert.are.same({ 2, "bob", "two\nlines" }, { b.id, b.name, b.text })
      assert.are.equal(2, stats(server.port).messages)
    end)
  end)

  it("refuses bad input: 422 for a missing field, 400 for bad JSON, 415 for other types, 405 for GET", function()
    with_example("sse-chat", function(server)
      local p = server.port
      assert.are.equal(422, post(p, "/send", "name=&text=hi", FORM).status)
      assert.are.equal(422, post(p, "/send", "name=ann", FORM).status)
      assert.are.equal(422, post(p, "/send", "name=ann&text=" .. string.rep("x", 1001), FORM).status)
      assert.are.equal(422, post(p, "/send", '{"name":"ann","text":7}', "application/json").status)
      assert.are.equal(400, post(p, "/send", "[1", "application/json").status)
      assert.are.equal(415, post(p, "/send", "hi", "text/plain").status)
      local res = helper.get(p, "/send")
      assert.are.equal(405, res.status)
      assert.are.equal("POST", res.headers["allow"])
      assert.are.equal(0, stats(p).messages)
    end)
  end)

  it("streams every message to every subscriber as an event with an id", function()
    with_example("sse-chat", function(server)
      local s1 = open_stream(server.port, "/events")
      local s2 = open_stream(server.port, "/events")
      for _, s in ipairs { s1, s2 } do
        assert.are.equal(200, s.status)
        assert.are.equal("text/event-stream", s.headers["content-type"])
        assert.are.equal("no-cache", s.headers["cache-control"])
        assert.are.equal("chunked", s.headers["transfer-encoding"])
      end
      assert.is_truthy(eventually(function() return stats(server.port).subscribers == 2 end, 2 * helper.slow))
      say(server.port, "ann", "first")
      say(server.port, "bob", "second")
      for _, s in ipairs { s1, s2 } do
        local e1 = assert(s:next_event())
        local e2 = assert(s:next_event())
        assert.are.same({ "ann", "first", 1 }, { e1.json.name, e1.json.text, e1.json.id })
        assert.are.same({ "bob", "second", 2 }, { e2.json.name, e2.json.text, e2.json.id })
        assert.is_truthy(e1.id:match("^%x+%-1$"), e1.id)
        assert.is_truthy(e2.id:match("^%x+%-2$"), e2.id)
        s:close()
      end
    end)
  end)

  it("replays the recent history to a new subscriber, and only what it missed after Last-Event-ID", function()
    with_example("sse-chat", function(server)
      for i = 1, 3 do say(server.port, "ann", "m" .. i) end

      local fresh = open_stream(server.port, "/events")
      local got = fresh:drain(0.3 * helper.slow)
      fresh:close()
      assert.are.equal(3, #got)
      local first_id = got[1].id

      local resumed = open_stream(server.port, "/events", { headers = { ["Last-Event-ID"] = first_id } })
      got = resumed:drain(0.3 * helper.slow)
      assert.are.same({ "m2", "m3" }, { got[1] and got[1].json.text, got[2] and got[2].json.text })
      assert.are.equal(2, #got)
      -- and it stays subscribed
      say(server.port, "bob", "m4")
      assert.are.equal("m4", assert(resumed:next_event()).json.text)
      resumed:close()

      -- an id from an earlier run of the server (another epoch): everything
      local stale = open_stream(server.port, "/events", { headers = { ["Last-Event-ID"] = "1-2" } })
      assert.are.equal(4, #stale:drain(0.3 * helper.slow))
      stale:close()
    end)
  end)

  it("keeps only the last 100 messages for replay", function()
    with_example("sse-chat", function(server)
      local conn = helper.connect(server.port)
      for i = 1, 105 do
        conn:send(helper.build_request(server.port, "POST", "/send",
          { close = false, headers = { ["content-type"] = FORM }, body = "name=n&text=t" .. i }))
        assert.are.equal(201, conn:response().status)
      end
      conn:close()
      local s = open_stream(server.port, "/events")
      local got = s:drain(0.5 * helper.slow)
      s:close()
      assert.are.equal(100, #got)
      assert.are.equal("t6", got[1].json.text)
      assert.are.equal("t105", got[100].json.text)
    end)
  end)

  it("takes a subscriber out of the room when its client leaves (req.on_close)", function()
    with_example("sse-chat", function(server)
      local s1 = open_stream(server.port, "/events")
      local s2 = open_stream(server.port, "/events")
      assert.is_truthy(eventually(function() return stats(server.port).subscribers == 2 end, 2 * helper.slow))
      s1:close()
      assert.is_truthy(eventually(function() return stats(server.port).subscribers == 1 end, 2 * helper.slow))
      s2.conn:reset()
      assert.is_truthy(eventually(function() return stats(server.port).subscribers == 0 end, 2 * helper.slow))
      -- publishing to nobody works
      say(server.port, "ann", "anyone%3F")
      assert.are.same({ subscribers = 0, messages = 1, dropped = 0 }, stats(server.port))
    end)
  end)

  it("drops a subscriber too slow to keep up instead of making the publisher wait", function()
    with_example("sse-chat", function(server)
      local p = server.port
      -- reads nothing, through a small receive window
      local slow = open_stream(p, "/events", { rcvbuf = 4096 })
      -- reads everything, as it comes
      local fast = open_stream(p, "/events")
      assert.is_truthy(eventually(function() return stats(p).subscribers == 2 end, 2 * helper.slow))

      local text = string.rep("x", 1000)
      local fast_got = {}
      local function read_fast()
        for _, ev in ipairs(fast:drain(0)) do fast_got[#fast_got + 1] = ev.json.id end
      end
      local pub = helper.connect(p)
      local sent, dropped = 0, false
      -- Kernel buffers on loopback hold a few MB before the server's write
      -- parks; 10,000 messages of 1 KB is well past that.
      while sent < 10000 and not dropped do
        pub:send(helper.build_request(p, "POST", "/send",
          { close = false, headers = { ["content-type"] = FORM }, body = "name=p&text=" .. text }))
        assert.are.equal(201, pub:response().status)   -- never held up by the slow one
        sent = sent + 1
        read_fast()
        if sent % 100 == 0 then dropped = stats(p).dropped == 1 end
      end
      pub:close()
      assert.is_true(dropped, "the slow subscriber was never dropped")
      local st = stats(p)
      assert.are.same({ 1, 1 }, { st.subscribers, st.dropped })

      -- the fast one got every message, in order
      local deadline = helper.now() + 5 * helper.slow
      while #fast_got < sent and helper.now() < deadline do
        for _, ev in ipairs(fast:drain(0.2)) do fast_got[#fast_got + 1] = ev.json.id end
      end
      assert.are.equal(sent, #fast_got)
      for i = 1, sent do
        if fast_got[i] ~= i then error("fast subscriber: message " .. i .. " came as " .. tostring(fast_got[i])) end
      end

      -- the slow one, reading at last, gets what was buffered for it, in
      -- order and with no gap, and then the end of its stream
      local last, count = 0, 0
      while true do
        local ev, why = slow:next_event(5 * helper.slow)
        if not ev then
          assert.are.equal("ended", why)
          break
        end
        count = count + 1
        assert.are.equal(last + 1, ev.json.id)
        last = ev.json.id
        slow.last_id = ev.id
      end
      assert.is_true(count > 0 and last < sent, "slow subscriber got " .. count .. " of " .. sent)
      slow:close()

      -- reconnecting with its Last-Event-ID, it catches up on the last 100
      local again = open_stream(p, "/events", { headers = { ["Last-Event-ID"] = slow.last_id } })
      local got = again:drain(0.5 * helper.slow)
      again:close()
      assert.are.equal(math.min(100, sent - last), #got)
      assert.are.equal(sent, got[#got].json.id)
      fast:close()
    end)
  end)

  it("works in a real browser: two chromium pages see each other's messages through EventSource", function()
    local chromium = "/usr/bin/chromium"
    local f = io.open(chromium, "rb")
    assert(f, chromium .. " is missing: run scripts/setup.sh (it installs Debian's chromium)")
    f:close()
    assert(helper.read_file("spec/browser/node_modules/playwright-core/package.json"),
      "spec/browser/node_modules/playwright-core is missing: run scripts/setup.sh (npm ci in spec/browser)")

    with_example("sse-chat", function(server)
      local dir = helper.tmpdir("browser")
      local pid_file = dir .. "/pids"
      -- timeout(1) bounds the run; chat.js has its own 25 s watchdog
      local cmd = string.format("timeout -k 3 30 node spec/browser/chat.js %s %s %s 2>&1",
        q(server.url .. "/"), q(dir .. "/profile"), q(pid_file))
      local p = assert(io.popen(cmd, "r"))
      local out = p:read("a")
      local _, how, code = p:close()
      -- chromium runs in a process group of its own: make sure none of it
      -- outlives the run (it exits by itself when its driver goes away)
      for pid in (helper.read_file(pid_file) or ""):gmatch("%d+") do
        local cmdline = helper.read_file("/proc/" .. pid .. "/cmdline") or ""
        if cmdline:find("chromium", 1, true) then
          os.execute("kill -KILL -- -" .. pid .. " 2>/dev/null; kill -KILL " .. pid .. " 2>/dev/null")
        end
      end
      assert.are.equal("ok", out:match("([^\n]*)\n*$"), "browser run failed (" .. tostring(how) ..
        " " .. tostring(code) .. "):\n" .. out .. "\nserver stderr:\n" .. server:stderr_text())
      assert.are.same({ "exit", 0 }, { how, code })

      -- both messages went through the server, and once the browser closed,
      -- every EventSource's request ended and left the room
      assert.are.equal(2, stats(server.port).messages)
      assert.is_truthy(eventually(function() return stats(server.port).subscribers == 0 end, 3 * helper.slow),
        "subscribers left after the browser closed: " .. cjson.encode(stats(server.port)))
    end)
  end)
end)

---------------------------------------------------------------------------
-- examples/async-respond
---------------------------------------------------------------------------

-- Sends GET path on a connection of its own and returns the connection, to
-- read the response later (requests in flight at once).
local function start_get(port, path)
  local conn = helper.connect(port, { timeout = 10 * helper.slow })
  assert(conn:send(helper.build_request(port, "GET", path)))
  return conn
end

describe("examples/async-respond", function()
  it("lists what to try on GET /", function()
    with_example("async-respond", function(server)
      local res = helper.get(server.port, "/")
      assert.are.equal(200, res.status)
      for _, path in ipairs { "/fetch", "/race", "/limited", "/timed" } do
        assert.is_truthy(res.body:find(path, 1, true), path)
      end
    end)
  end)

  it("answers /fetch from a spawned task once the simulated upstream replied", function()
    with_example("async-respond", function(server)
      local res = helper.get(server.port, "/fetch?delay=0.1")
      assert.are.equal(200, res.status)
      assert.are.equal("application/json", res.headers["content-type"])
      assert.are.same({ upstream = "users", took = 0.1, answer = 42 }, json(res).fetched)
    end)
  end)

  it("answers 500 when the task raises, and logs the error with its route", function()
    with_example("async-respond", function(server)
      local res = helper.get(server.port, "/fetch?delay=0&fail=1")
      assert.are.equal(500, res.status)
      assert.are.equal("Internal Server Error\n", res.body)
      assert.is_truthy(server:wait_stderr("%[error%] request %d+ GET /fetch%?delay=0&fail=1 %(route /fetch%): users answered 503"))
    end, "expect errors")
  end)

  it("answers /race with the first mirror to reply", function()
    with_example("async-respond", function(server)
      local b = json(helper.get(server.port, "/race?a=1&b=0.05&timeout=4"))
      assert.are.same({ winner = "mirror-b", took = 0.05, answer = 42 }, b)
      local a = json(helper.get(server.port, "/race?a=0.05&b=1&timeout=4"))
      assert.are.equal("mirror-a", a.winner)
    end)
  end)

  it("answers /race with 504 JSON when the timeout comes first", function()
    with_example("async-respond", function(server)
      local res = helper.get(server.port, "/race?a=3&b=3&timeout=0.2")
      assert.are.equal(504, res.status)
      assert.are.same({ error = "no mirror answered in time", timeout = 0.2 }, json(res))
      assert.is_true(res.elapsed < 3, "answered before either mirror would have")
    end)
  end)

  it("runs /limited 2 at a time, queues 2 and sheds the next with 503 and Retry-After", function()
    with_example("async-respond", function(server)
      local conns = {}
      for i = 1, 4 do conns[i] = start_get(server.port, "/limited?work=0.5") end
      socket.sleep(0.2)                    -- all four are in: two run, two wait
      local shed = helper.get(server.port, "/limited?work=0.5")
      assert.are.equal(503, shed.status)
      assert.are.equal("1", shed.headers["retry-after"])
      for i = 1, 4 do
        local res = conns[i]:response()
        assert.are.equal(200, res.status, "request " .. i)
        local body = json(res)
        assert.are.equal(0.5, body.worked)
        assert.is_true(body.running <= 2, "never more than 2 at once")
        conns[i]:close()
      end
    end)
  end)

  it("answers /limited with 503 to a queued request that waited over 1 s", function()
    with_example("async-respond", function(server)
      local conns = {}
      for i = 1, 4 do conns[i] = start_get(server.port, "/limited?work=3") end
      local statuses = {}
      for i = 1, 4 do
        local res = conns[i]:response()
        statuses[res.status] = (statuses[res.status] or 0) + 1
        conns[i]:close()
      end
      assert.are.same({ [200] = 2, [503] = 2 }, statuses)
    end)
  end)

  it("times /timed with middleware around the async handler (x-response-time)", function()
    with_example("async-respond", function(server)
      local res = helper.get(server.port, "/timed?delay=0.05")
      assert.are.equal(200, res.status)
      assert.are.equal("prices", json(res).upstream)
      assert.is_truthy((res.headers["x-response-time"] or ""):match("^%d+%.%dms$"), res.raw)
    end)
  end)

  it("turns an error raised in /timed into 502 JSON with the middleware's error hook, still timed", function()
    with_example("async-respond", function(server)
      local res = helper.get(server.port, "/timed?delay=0&fail=1")
      assert.are.equal(502, res.status)
      assert.are.same({ error = "prices answered 503" }, json(res))
      assert.is_truthy((res.headers["x-response-time"] or ""):match("^%d+%.%dms$"), res.raw)
    end)
  end)

  it("stops the work of a client that left, quietly, and frees its /limited slot", function()
    with_example("async-respond", function(server)
      for _, path in ipairs { "/fetch?delay=3", "/race?a=3&b=3&timeout=4", "/timed?delay=3",
                              "/limited?work=3", "/limited?work=3" } do
        local conn = start_get(server.port, path)
        socket.sleep(0.1)
        conn:close()
      end
      assert.is_truthy(server:wait_stderr(
        '"GET /limited%?work=3 HTTP/1%.1" 499.*"GET /limited%?work=3 HTTP/1%.1" 499'), server:stderr_text())
      -- both slots are free again (were they still held, these would queue
      -- and get 503 after 1 s)
      local c1, c2 = start_get(server.port, "/limited?work=0.1"), start_get(server.port, "/limited?work=0.1")
      assert.are.equal(200, c1:response().status)
      assert.are.equal(200, c2:response().status)
      c1:close(); c2:close()
    end)
  end)
end)
