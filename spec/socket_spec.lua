-- Cosockets (issue 9 items 1 and 8; DESIGN.md 4.6): moonring.tcp() and its
-- methods, keep-alive pools and the request's ownership of its connections,
-- over real sockets, against spec/upstream.lua (see spec/cosockets.lua).
-- DNS and unix sockets: dns_spec.lua; one socket shared by several tasks:
-- socket_edge_spec.lua.
local helper = require "helper"
local cs = require "cosockets"
local run, run_raises, start, finish = cs.run, cs.run_raises, cs.start, cs.finish
local timed_hello, full_listener, BLOB = cs.timed_hello, cs.full_listener, cs.BLOB

describe("cosockets", function()
  local up, server
  setup(function() up, server = cs.start_fixture() end)
  teardown(function() cs.stop_fixture(up, server) end)

  describe("connect, send and receive", function()
    it("sends a line and receives lines with \"*l\", \"l\" and the default pattern", function()
      local r = run(server, [[
        local s = moonring.tcp()
        local ok, err = s:connect("127.0.0.1", UP)
        local n = s:send("PING\r\n")
        local pong = s:receive("*l")
        s:send("HEX " .. hex("a\r\nb\n\nlast") .. "\n")
        local a = s:receive()
        local b = s:receive("l")
        local empty = s:receive("*l")
        s:send("PIECES 20 " .. hex("\n") .. "\n")
        local last = s:receive()
        return ok, err, n, pong, a, b, empty, last, s:close()
      ]])
      assert.are.same({ 1, nil, 6, "PONG", "a", "b", "", "last", 1, n = 9 }, r)
    end)

    it("receives a byte count, across pieces that arrive apart", function()
      local r = run(server, [[
        local s = upsock()
        s:send("BLOB 10\n")
        local four = s:receive(4)
        local six = s:receive(6)
        local zero = s:receive(0)
        s:send("PIECES 30 " .. hex("abc") .. " " .. hex("def") .. " " .. hex("gh") .. "\n")
        local t0 = moonring.now()
        local joined = s:receive(8)
        return four, six, zero, joined, moonring.now() - t0 >= 0.05
      ]])
      assert.are.same({ "0123", "456789", "", "abcdefgh", true, n = 5 }, r)
    end)

    it("receives \"*a\" until the peer closes, and a count cut short by the close", function()
      local r = run(server, [[
        local s = upsock()
        s:send("BLOBCLOSE 100000\n")
        local all = s:receive("*a")
        local s2 = upsock()
        s2:send("BLOBCLOSE 25\n")
        local first = s2:receive(10)
        local data, err, partial = s2:receive(20)
        local after = table.pack(s2:receive())
        local s3 = upsock()
        s3:send("HEXCLOSE " .. hex("no newline") .. "\n")
        local l = table.pack(s3:receive())
        local s4 = upsock()
        s4:send("BLOBCLOSE 7\n")
        local a = s4:receive("a")
        return #all, all:sub(1, 20), first, data, err, partial, after, l, a
      ]])
      assert.are.equal(100000, r[1])
      assert.are.equal(BLOB:sub(1, 20), r[2])
      assert.are.equal("0123456789", r[3])
      assert.are.same({ nil, "closed", "abcdef012345678" }, { r[4], r[5], r[6] })
      assert.are.same({ nil, "closed", n = 2 }, r[7])
      assert.are.same({ nil, "closed", "no newline", n = 3 }, r[8])
      assert.are.equal("0123456", r[9])
    end)

    it("receiveany returns what is there, at most max, and waits when nothing is", function()
      local r = run(server, [[
        local s = upsock()
        s:send("BLOB 10\n")
        local a = s:receiveany(4)
        local b = s:receiveany(100)
        s:send("PIECES 80 " .. hex("hi") .. " " .. hex("there") .. "\n")
        local t0 = moonring.now()
        local c = s:receiveany(100)
        local d = s:receiveany(100)
        return a, b, c, d, moonring.now() - t0 >= 0.06
      ]])
      assert.are.same({ "0123", "456789", "hi", "there", true, n = 5 }, r)
    end)

    it("a line longer than 1 MiB fails with \"line too long\" instead of buffering on", function()
      local r = run(server, [[
        local s = upsock()
        s:send("BLOB 2000000\n")
        local data, err, partial = s:receive()
        return data, err, partial and #partial > 1024 * 1024, (s:send("PING\n"))
      ]])
      assert.are.same({ nil, "line too long", true, nil, n = 4 }, r)
    end)
  end)

  describe("receiveuntil", function()
    it("with a size returns chunks, then nil at the pattern (OpenResty's example)", function()
      local r = run(server, [[
        local s = upsock()
        s:send("HEX " .. hex("hello, world -\r\n--abcedhb" .. "tail\n") .. "\n")
        local reader = s:receiveuntil("\r\n--abcedhb")
        local chunks = {}
        for i = 1, 10 do
          local data, err = reader(4)
          if not data then chunks[#chunks + 1] = err or "END" break end
          chunks[#chunks + 1] = data
        end
        return chunks, s:receive()
      ]])
      assert.are.same({ { "hell", "o, w", "orld", " -", "END" }, "tail", n = 2 }, r)
    end)

    it("without a size returns what comes before each occurrence, across split reads", function()
      local r = run(server, [[
        local s = upsock()
        -- "a--b--c\n", the second "--" split across two sends
        s:send("PIECES 40 " .. hex("a--b-") .. " " .. hex("-c\n") .. "\n")
        local it = s:receiveuntil("--")
        local a = it()
        local b = it()
        return a, b, s:receive()
      ]])
      assert.are.same({ "a", "b", "c", n = 3 }, r)
    end)

    it("inclusive = true keeps the pattern, with and without a size", function()
      local r = run(server, [[
        local s = upsock()
        s:send("HEX " .. hex("a--b--abcd--x\n") .. "\n")
        local it = s:receiveuntil("--", { inclusive = true })
        local a = it()
        local b = it()
        local c1 = it(2)
        local c2 = it(2)
        local c3 = table.pack(it(2))
        return a, b, c1, c2, c3, s:receive()
      ]])
      assert.are.same({ "a--", "b--", "ab", "cd--", { n = 1 }, "x", n = 6 }, r)
    end)

    it("the peer closing before the pattern gives nil, \"closed\", partial", function()
      local r = run(server, [[
        local s = upsock()
        s:send("HEXCLOSE " .. hex("abc-") .. "\n")
        return s:receiveuntil("--")()
      ]])
      assert.are.same({ nil, "closed", "abc-", n = 3 }, r)
    end)

    it("misuse raises: an empty pattern, a negative size", function()
      assert.matches("non%-empty pattern", run_raises(server, [[
        local s = upsock(); s:receiveuntil("")
      ]]))
      assert.matches("size >= 0", run_raises(server, [[
        local s = upsock(); s:receiveuntil("x")(-1)
      ]]))
    end)
  end)

  describe("send", function()
    it("sends nested arrays of strings and numbers, and numbers", function()
      local r = run(server, [[
        local s = upsock()
        local n1 = s:send({ "ECHO ", { "a", 1, { 2.5, "b", {} } }, {}, "\n" })
        local l1 = s:receive()
        local n2 = s:send("ECHO ")
        local n3 = s:send(42)
        local n4 = s:send({ "\n" })
        local l2 = s:receive()
        local n5 = s:send({})
        local n6 = s:send("")
        return n1, l1, n2, n3, n4, l2, n5, n6
      ]])
      assert.are.same({ 12, "a12.5b", 5, 2, 1, "42", 0, 0, n = 8 }, r)
    end)

    it("an 8 MiB send to a slow reader parks the task (others are served) and completes", function()
      local c = start(server, [[
        local s = upsock()
        local data = big(8 * 1024 * 1024)
        s:send("SINK " .. #data .. " 10\n")
        state.big = "sending"
        local t0 = moonring.now()
        local n, err = s:send(data)
        state.big = "sent"
        local took = moonring.now() - t0
        local got = s:receive()
        return n, err, got, took
      ]])
      -- while the upstream reads 64 KiB every 10 ms, the sender is parked
      local st = helper.wait_state(server, function(st) return st.big == "sending" end)
      assert.are.equal("sending", st.big)
      helper.sleep(0.2)
      local res, took = timed_hello(server)
      assert.are.equal(200, res.status)
      assert.is_true(took < 0.5 * helper.slow, "a GET took " .. took .. " s during the big send")
      assert.are.equal("sending", helper.state(server).big, "the send did not wait for the reader")
      local r = finish(c)
      assert.are.equal(8 * 1024 * 1024, r[1])
      assert.is_nil(r[2])
      assert.are.equal("GOT 8388608 0123456789abcdef 0123456789abcdef", r[3])
      assert.is_true(r[4] > 0.2, "the 8 MiB send took only " .. r[4] .. " s")
    end)

    it("a send the peer does not read times out after the send timeout", function()
      local r = run(server, [[
        local s = upsock()
        s:settimeouts(2000, 300, 2000)
        local ok = cmd(s, "NOREAD")
        local t0 = moonring.now()
        local n, err = s:send(big(8 * 1024 * 1024))
        local took = moonring.now() - t0
        return ok, n, err, took, table.pack(s:send("PING\n"))
      ]])
      assert.are.equal("OK", r[1])
      assert.are.same({ nil, "timeout" }, { r[2], r[3] })
      assert.is_true(r[4] >= 0.25 and r[4] < 1.5 * helper.slow, "timed out after " .. r[4] .. " s")
      assert.are.same({ nil, "closed", n = 2 }, r[5])
    end)

    it("misuse raises: a function, a boolean, tables nested without end", function()
      assert.matches("expected a string, number or array of them, got function",
        run_raises(server, [[ upsock():send(print) ]]))
      assert.matches("got boolean", run_raises(server, [[ upsock():send({ "a", { true } }) ]]))
      assert.matches("nested too deep", run_raises(server, [[
        local t = {}; t[1] = t; upsock():send(t)
      ]]))
    end)
  end)

  describe("timeouts", function()
    it("a read timeout returns nil, \"timeout\" and leaves the connection usable", function()
      local r = run(server, [[
        local s = upsock()
        s:settimeouts(2000, 2000, 100)
        s:send("SLEEP 400 late\n")
        local t0 = moonring.now()
        local data, err, partial = s:receive()
        local took = moonring.now() - t0
        s:settimeout(3000)
        local late = s:receive()
        return data, err, partial, took, late, cmd(s, "PING")
      ]])
      assert.are.same({ nil, "timeout", "" }, { r[1], r[2], r[3] })
      assert.is_true(r[4] >= 0.08 and r[4] < 0.35 * helper.slow, "timed out after " .. r[4] .. " s")
      assert.are.same({ "late", "PONG" }, { r[5], r[6] })
    end)

    it("settimeout(ms) bounds a receive; the partial line comes back", function()
      local r = run(server, [[
        local s = upsock()
        s:settimeout(150)
        s:send("PIECES 1000 " .. hex("part") .. " " .. hex("rest\n") .. "\n")
        return s:receive()
      ]])
      assert.are.same({ nil, "timeout", "part", n = 3 }, r)
    end)

    it("a connect that gets no answer times out after the connect timeout", function()
      local lport, close_listener = full_listener()
      finally(close_listener)
      local r = run(server, string.format([[
        local s = moonring.tcp()
        s:settimeouts(300, 1000, 1000)
        local t0 = moonring.now()
        local ok, err = s:connect("127.0.0.1", %d)
        return ok, err, moonring.now() - t0
      ]], lport))
      assert.are.same({ nil, "timeout" }, { r[1], r[2] })
      assert.is_true(r[3] >= 0.25 and r[3] < 1.5 * helper.slow, "timed out after " .. r[3] .. " s")
    end)

    it("misuse raises: negative or non-integer milliseconds", function()
      assert.matches("milliseconds", run_raises(server, [[ moonring.tcp():settimeout(-1) ]]))
      assert.matches("number", run_raises(server, [[ moonring.tcp():settimeouts(1, 2, "x") ]]))
    end)
  end)

  describe("keep-alive pool", function()
    it("setkeepalive hands the connection back: the next connect reuses it (0 then 1)", function()
      local r = run(server, [[
        local s = upsock({ pool = "reuse-a" })
        local r0 = s:getreusedtimes()
        local id = cmd(s, "ID")
        local k = s:setkeepalive()
        local after = table.pack(s:getreusedtimes())
        local s2 = upsock({ pool = "reuse-a" })
        local id2 = cmd(s2, "ID")
        return r0, k, after, s2:getreusedtimes(), id == id2, s2:setkeepalive()
      ]])
      assert.are.same({ 0, 1, { nil, "closed", n = 2 }, 1, true, 1, n = 6 }, r)
      -- and across requests: the pool is the worker's
      local r2 = run(server, [[
        local s = upsock({ pool = "reuse-a" })
        return s:getreusedtimes(), cmd(s, "PING")
      ]])
      assert.are.same({ 2, "PONG", n = 2 }, r2)
    end)

    it("the default pool key is host:port, shared by plain connects", function()
      local r = run(server, [[
        local s = moonring.tcp()
        assert(s:connect("127.0.0.1", UP))
        local id = cmd(s, "ID")
        assert(s:setkeepalive())
        local s2 = moonring.tcp()
        assert(s2:connect("127.0.0.1", UP))
        local same = cmd(s2, "ID") == id
        local n = s2:getreusedtimes()
        s2:close()
        return same, n
      ]])
      assert.are.same({ true, 1, n = 2 }, r)
    end)

    it("over the pool size, the least recently pooled connection is closed", function()
      local ids = run(server, [[
        local socks, ids = {}, {}
        for i = 1, 3 do
          socks[i] = upsock({ pool = "lru-b" })
          ids[i] = cmd(socks[i], "ID")
        end
        for i = 1, 3 do assert(socks[i]:setkeepalive(0, 2)) end
        return ids
      ]])[1]
      assert.is_truthy(up:wait_gone(ids[1]), "the LRU connection " .. ids[1] .. " was not closed")
      helper.sleep(0.1)
      assert.is_false(up:saw("eof", ids[2]))
      assert.is_false(up:saw("eof", ids[3]))
      local got = run(server, [[
        local got = {}
        for i = 1, 3 do
          local s = upsock({ pool = "lru-b" })
          got[i] = { cmd(s, "ID"), s:getreusedtimes() }
        end
        return got
      ]])[1]
      -- most recently pooled first, then a fresh connection
      assert.are.same({ ids[3], 1 }, got[1])
      assert.are.same({ ids[2], 1 }, got[2])
      assert.are_not.equal(ids[1], got[3][1])
      assert.are.equal(0, got[3][2])
    end)

    it("an idle pooled connection is closed after its idle timeout", function()
      local r = run(server, [[
        local s = upsock({ pool = "idle-c" })
        local id = cmd(s, "ID")
        assert(s:setkeepalive(150))
        moonring.sleep(0.5)
        local s2 = upsock({ pool = "idle-c" })
        return id, cmd(s2, "ID"), s2:getreusedtimes()
      ]])
      assert.is_true(up:saw("eof", r[1]), "the idle connection was not closed")
      assert.are_not.equal(r[1], r[2])
      assert.are.equal(0, r[3])
    end)

    it("a pooled connection the peer closed is not handed out", function()
      local r = run(server, [[
        local s = upsock({ pool = "peer-d" })
        local id = cmd(s, "ID")
        local ok = cmd(s, "CLOSEAFTER 50")
        assert(s:setkeepalive())
        moonring.sleep(0.3)
        local s2 = upsock({ pool = "peer-d" })
        return id, ok, cmd(s2, "ID"), s2:getreusedtimes()
      ]])
      assert.are.equal("OK", r[2])
      assert.are_not.equal(r[1], r[3])
      assert.are.equal(0, r[4])
      local again = run(server, [[ return cmd(upsock({ pool = "peer-d" }), "PING") ]])
      assert.are.same({ "PONG", n = 1 }, again)
    end)

    it("a pooled connection the peer speaks on is closed, not handed out", function()
      local r = run(server, [[
        local s = upsock({ pool = "late-e" })
        local id = cmd(s, "ID")
        s:settimeout(50)
        s:send("SLEEP 150 late\n")
        local _, err = s:receive()
        assert(s:setkeepalive())             -- "late" arrives while it is pooled
        moonring.sleep(0.4)
        local s2 = upsock({ pool = "late-e" })
        return id, err, cmd(s2, "ID"), s2:getreusedtimes()
      ]])
      assert.are.equal("timeout", r[2])
      assert.is_truthy(up:wait_gone(r[1]))
      assert.are_not.equal(r[1], r[3])
      assert.are.equal(0, r[4])
    end)

    it("unread data in buffer: setkeepalive refuses, the socket stays usable", function()
      local r = run(server, [[
        local s = upsock({ pool = "unread-f" })
        s:send("HEX " .. hex("one\ntwo\n") .. "\n")
        local one = s:receive()
        local k1 = table.pack(s:setkeepalive())
        local two = s:receive()
        local k2 = s:setkeepalive()
        return one, k1, two, k2
      ]])
      assert.are.same({ "one", { nil, "unread data in buffer", n = 2 }, "two", 1, n = 4 }, r)
    end)

    it("setkeepalive on a closed socket, and misuse of its arguments", function()
      local r = run(server, [[
        local s = moonring.tcp()
        local a = table.pack(s:setkeepalive())
        local s2 = upsock()
        s2:close()
        return a, table.pack(s2:setkeepalive())
      ]])
      assert.are.same({ { nil, "closed", n = 2 }, { nil, "closed", n = 2 }, n = 2 }, r)
      assert.matches("pool size", run_raises(server, [[ upsock():setkeepalive(1000, 0) ]]))
      assert.matches("milliseconds", run_raises(server, [[ upsock():setkeepalive(-5) ]]))
    end)
  end)

  describe("errors", function()
    it("connection refused", function()
      local port = helper.free_port()
      local r = run(server, string.format([[
        local s = moonring.tcp()
        return s:connect("127.0.0.1", %d)
      ]], port))
      assert.are.same({ nil, "connection refused", n = 2 }, r)
    end)

    it("\"closed\" after close: send, receive, close again, getreusedtimes", function()
      local r = run(server, [[
        local s = upsock()
        local c1 = s:close()
        return c1, table.pack(s:send("PING\n")), table.pack(s:receive()),
          table.pack(s:close()), table.pack(s:getreusedtimes()), table.pack(moonring.tcp():receive())
      ]])
      assert.are.same({ 1, { nil, "closed", n = 2 }, { nil, "closed", n = 2 }, { nil, "closed", n = 2 },
        { nil, "closed", n = 2 }, { nil, "closed", n = 2 }, n = 6 }, r)
    end)

    it("receive on a connection the peer closed", function()
      local r = run(server, [[
        local s = upsock()
        s:send("CLOSE\n")
        return table.pack(s:receive()), table.pack(s:receive(5))
      ]])
      assert.are.same({ { nil, "closed", "", n = 3 }, { nil, "closed", n = 2 }, n = 2 }, r)
    end)

    it("\"socket busy reading\" when two tasks read one socket", function()
      local r = run(server, [[
        local s = upsock()
        s:send("SLEEP 150 first\n")
        local a = moonring.spawn(function() return s:receive() end)
        local b = moonring.spawn(function() return s:receive() end)
        return table.pack(a:join()), table.pack(b:join())
      ]])
      assert.are.same({ { "first", n = 1 }, { nil, "socket busy reading", n = 2 }, n = 2 }, r)
    end)

    it("\"socket busy writing\" when a second task sends while a send is parked", function()
      local r = run(server, [[
        local s = upsock()
        assert(cmd(s, "NOREAD") == "OK")
        local a = moonring.spawn(function() return s:send(big(8 * 1024 * 1024)) end)
        moonring.sleep(0.05)
        local second = table.pack(s:send("PING\n"))
        s:close()
        return second, table.pack(a:join())
      ]])
      assert.are.same({ { nil, "socket busy writing", n = 2 }, { nil, "closed", n = 2 }, n = 2 }, r)
    end)

    it("close from another task ends a parked receive with \"closed\"", function()
      local r = run(server, [[
        local s = upsock()
        s:send("SILENT\n")
        local a = moonring.spawn(function() return s:receive() end)
        moonring.sleep(0.05)
        local c = s:close()
        return c, table.pack(a:join())
      ]])
      assert.are.same({ 1, { nil, "closed", n = 2 }, n = 2 }, r)
    end)

    it("misuse raises: bad ports, a bad receive pattern, receiveany(0)", function()
      assert.matches("port number", run_raises(server, [[ moonring.tcp():connect("127.0.0.1", 0) ]]))
      assert.matches("port number", run_raises(server, [[ moonring.tcp():connect("127.0.0.1", 65536) ]]))
      assert.matches("number expected", run_raises(server, [[ moonring.tcp():connect("127.0.0.1", "http") ]]))
      assert.matches("number expected", run_raises(server, [[ moonring.tcp():connect("127.0.0.1") ]]))
      assert.matches("table expected", run_raises(server, [[ moonring.tcp():connect("127.0.0.1", UP, "x") ]]))
      assert.matches("\"%*l\", \"%*a\" or a byte count", run_raises(server, [[ upsock():receive("*x") ]]))
      assert.matches("byte count", run_raises(server, [[ upsock():receive(-1) ]]))
      assert.matches("byte count > 0", run_raises(server, [[ upsock():receiveany(0) ]]))
    end)

    it("setoption is accepted and ignored; sslhandshake says ssl is not supported", function()
      local r = run(server, [[
        local s = upsock()
        return s:setoption("keepalive", true), table.pack(s:sslhandshake()), cmd(s, "PING")
      ]])
      assert.are.equal(1, r[1])
      assert.is_nil(r[2][1])
      assert.matches("ssl is not supported", r[2][2])
      assert.are.equal("PONG", r[3])
    end)
  end)

  describe("concurrency", function()
    it("10 parallel upstream calls of 100 ms each finish together in about 100 ms", function()
      local t0 = helper.now()
      local r = run(server, [[
        local t0 = moonring.now()
        local tasks = {}
        for i = 1, 10 do
          tasks[i] = moonring.spawn(function()
            local s = upsock()
            local line = cmd(s, "SLEEP 100 r" .. i)
            s:close()
            return line
          end)
        end
        local out = {}
        for i = 1, 10 do out[i] = tasks[i]:join() end
        return out, moonring.now() - t0
      ]])
      local wall = helper.now() - t0
      assert.are.same({ "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10" }, r[1])
      assert.is_true(r[2] >= 0.09, "the calls took " .. r[2] .. " s")
      assert.is_true(r[2] < 0.6 * helper.slow, "10 calls of 100 ms took " .. r[2] .. " s")
      assert.is_true(wall < 0.6 * helper.slow, "the request took " .. wall .. " s")
    end)

    it("an upstream that never answers: nil, \"timeout\" near the timeout; others served meanwhile",
      function()
      local c = start(server, [[
        local s = upsock()
        s:settimeout(800)
        s:send("SILENT\n")
        local t0 = moonring.now()
        local data, err = s:receive()
        return data, err, moonring.now() - t0
      ]])
      local t0 = helper.now()
      helper.sleep(0.1)
      local res, took = timed_hello(server)
      assert.are.equal(200, res.status)
      assert.are.equal("hello\n", res.body)
      assert.is_true(took < 0.3 * helper.slow, "GET /hello took " .. took .. " s during the wait")
      assert.is_true(helper.now() - t0 < 0.6, "the GET was not answered during the wait")
      local r = finish(c)
      assert.are.same({ nil, "timeout" }, { r[1], r[2] })
      assert.is_true(r[3] >= 0.75 and r[3] < 1.3 * helper.slow, "timed out after " .. r[3] .. " s")
    end)
  end)

  describe("the request owns its connections", function()
    it("a client disconnect mid-call releases the upstream connection", function()
      local c = start(server, [[
        local s = upsock()
        state.disc_id = cmd(s, "ID")
        s:send("SILENT\n")
        local data, err = s:receive()        -- the upstream never answers
        state.disc_after = err or "returned"
      ]])
      local st, ok = helper.wait_state(server, function(st) return st.disc_id end)
      assert.is_true(ok, "the handler did not reach the upstream")
      helper.sleep(0.05)
      c:close()
      local t0 = helper.now()
      assert.is_truthy(up:wait_gone(st.disc_id, 2 * helper.slow),
        "the upstream did not see the connection close after the client left")
      assert.is_true(helper.now() - t0 < 1.2 * helper.slow)
      assert.is_nil(helper.state(server).disc_after)   -- cancelled: the code after receive never ran
    end)

    it("a socket the handler leaves open is closed when the request ends", function()
      local r = run(server, [[
        local s = upsock()
        state.leak = s                       -- even one kept reachable
        return cmd(s, "ID")
      ]])
      assert.is_truthy(up:wait_gone(r[1]), "the connection left open outlived its request")
      local again = run(server, [[ return state.leak:send("PING\n") ]])
      assert.are.same({ nil, "closed", n = 2 }, again)
    end)

    it("a request deadline closes the connection its handler waits on", function()
      local up2 = up
      helper.with_server({ files = cs.app_files(up2), args = { "--request-timeout", "0.5" } }, function(s2)
        local c = start(s2, [[
          local s = upsock()
          state.dl_id = cmd(s, "ID")
          s:send("SILENT\n")
          s:receive()
        ]])
        local res = c:response()
        c:close()
        assert.are.equal(504, res.status)
        local st = helper.state(s2)
        assert.is_truthy(up2:wait_gone(st.dl_id), "the deadline did not close the upstream connection")
      end)
    end)
  end)


  describe("server tasks", function()
    it("sockets work in moonring.background tasks, after the request ended", function()
      local r = run(server, [[
        moonring.background(function()
          moonring.sleep(0.1)                  -- the request is over by now
          local s = upsock()
          state.bg = { cmd(s, "PING"), cmd(s, "SLEEP 20 slept") }
          assert(s:setkeepalive())
        end)
        return "started"
      ]])
      assert.are.equal("started", r[1])
      local st, ok = helper.wait_state(server, function(st) return st.bg end)
      assert.is_true(ok, "the background task did not finish")
      assert.are.same({ "PONG", "slept" }, st.bg)
    end)
  end)
end)

describe("cosockets at shutdown", function()
  it("the server exits cleanly on SIGTERM with pooled and open connections (exit 0, no hang)", function()
    local up = cs.start_upstream()
    finally(function() up:stop() end)
    local server = helper.start { app = helper.app(cs.app_files(up)) }
    local r = run(server, [[
      local s = upsock({ pool = "shutdown" })
      local pooled = cmd(s, "ID")
      assert(s:setkeepalive(0))
      local ch = moonring.channel()
      moonring.background(function()
        local b = upsock()                     -- held open by a server task
        ch:put(cmd(b, "ID"))
        moonring.sleep(3600)
      end)
      moonring.background(function()
        local w = upsock()                     -- a server task parked in receive
        w:send("SILENT\n")
        w:receive()
      end)
      return pooled, ch:take()
    ]])
    local t0 = helper.now()
    local status = server:stop()
    assert.are.equal(0, status)
    assert.is_true(helper.now() - t0 < 3 * helper.slow, "stop took " .. (helper.now() - t0) .. " s")
    assert.is_truthy(up:wait_gone(r[1]), "the pooled connection was not closed")
    assert.is_truthy(up:wait_gone(r[2]), "the background task's connection was not closed")
    assert.are.equal("", up:errors())
  end)
end)
