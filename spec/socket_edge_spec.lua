-- Cosocket edge cases: one socket shared by several tasks (a reconnect, a
-- close or a failure in one task while another waits on it), cancellation
-- in every wait, timers after a long Lua slice, limits of unix paths. Against
-- spec/upstream.lua (see spec/cosockets.lua).
local helper = require "helper"
local cs = require "cosockets"
local run = cs.run
local full_listener = cs.full_listener

describe("cosockets, edge cases", function()
  local up, server
  setup(function() up, server = cs.start_fixture() end)
  teardown(function() cs.stop_fixture(up, server) end)

  it("a timeout counts from the call, even after the handler computed for a while", function()
    local r = run(server, [[
      local s = upsock()
      local t0 = moonring.now()
      while moonring.now() - t0 < 0.4 do end   -- 400 ms of CPU, under the 1 s budget
      s:settimeout(300)                        -- 300 ms for an answer that takes 100 ms
      s:send("SLEEP 100 answered\n")
      return s:receive()
    ]])
    assert.are.same({ "answered", n = 1 }, r)
  end)

  it("a reconnect ends another task's parked receive with \"closed\"", function()
    local r = run(server, [[
      local p = upsock({ pool = "reconnect-g" })
      assert(p:setkeepalive())                 -- so the reconnect below is immediate
      local s = upsock()
      s:send("SILENT\n")
      local a = moonring.spawn(function() return s:receive() end)
      moonring.sleep(0.05)
      assert(s:connect("127.0.0.1", UP, { pool = "reconnect-g" }))
      moonring.sleep(0.05)
      local mine = table.pack(cmd(s, "PING"))
      return table.pack(a:join()), mine
    ]])
    assert.are.same({ { nil, "closed", n = 2 }, { "PONG", n = 1 }, n = 2 }, r)
  end)

  it("a reconnect ends another task's parked send with an error, not a byte count", function()
    local r = run(server, [[
      local s = upsock()
      assert(cmd(s, "NOREAD") == "OK")
      local a = moonring.spawn(function() return s:send(big(8 * 1024 * 1024)) end)
      moonring.sleep(0.1)
      assert(s:connect("127.0.0.1", UP))
      return table.pack(a:join()), cmd(s, "PING")
    ]])
    assert.is_nil(r[1][1], "the send reported " .. tostring(r[1][1]) .. " bytes sent")
    assert.are.equal("closed", r[1][2])
    assert.are.equal("PONG", r[2])
  end)

  it("close from another task ends a parked send with \"closed\"", function()
    local r = run(server, [[
      local s = upsock()
      assert(cmd(s, "NOREAD") == "OK")
      local a = moonring.spawn(function() return s:send(big(8 * 1024 * 1024)) end)
      moonring.sleep(0.1)
      return s:close(), table.pack(a:join())
    ]])
    assert.are.same({ 1, { nil, "closed", n = 2 }, n = 2 }, r)
  end)

  it("cancelling a task parked in connect, send or receive closes that connection", function()
    local lport, close_listener = full_listener()
    finally(close_listener)
    local r = run(server, string.format([[
      local c = moonring.spawn(function() return moonring.tcp():connect("127.0.0.1", %d) end)
      local sw = upsock()
      assert(cmd(sw, "NOREAD") == "OK")
      local w = moonring.spawn(function() return sw:send(big(8 * 1024 * 1024)) end)
      local sr = upsock()
      local rid = cmd(sr, "ID")
      local rt = moonring.spawn(function() return sr:receive() end)
      moonring.sleep(0.1)
      local out = {}
      for _, t in ipairs({ c, w, rt }) do out[#out + 1] = { t:cancel(), t:status() } end
      moonring.sleep(0.05)
      return out, rid, table.pack(sr:receive()), table.pack(sw:send("x"))
    ]], lport))
    assert.are.same({ { true, "cancelled" }, { true, "cancelled" }, { true, "cancelled" } }, r[1])
    assert.is_truthy(up:wait_gone(r[2]))
    assert.are.same({ nil, "closed", n = 2 }, r[3])
    assert.are.same({ nil, "closed", n = 2 }, r[4])
  end)

  it("a server task parked on a request's socket is woken when the request closes it", function()
    local r = run(server, [[
      local s = upsock()
      local id = cmd(s, "ID")
      s:send("SILENT\n")
      moonring.background(function()
        state.orphan = table.pack(s:receive())
      end)
      moonring.sleep(0.05)
      return id
    ]])
    assert.is_truthy(up:wait_gone(r[1]), "the request's connection was not closed at its end")
    local st, ok = helper.wait_state(server, function(st) return st.orphan end)
    assert.is_true(ok, "the background task was left parked on a closed connection")
    assert.are.same({ nil, "closed", n = 2 }, st.orphan)
  end)

  it("a send that fails in one task ends another task's receive on that socket", function()
    local r = run(server, [[
      local s = upsock()
      s:settimeouts(2000, 200, 3000)
      assert(cmd(s, "NOREAD") == "OK")
      local reader = moonring.spawn(function() return s:receive() end)
      local n, err = s:send(big(8 * 1024 * 1024))  -- the peer reads nothing: times out
      moonring.sleep(0.1)
      local st = reader:status()
      if st == "done" then return n, err, st, table.pack(reader:join()) end
      return n, err, st
    ]])
    assert.are.same({ nil, "timeout" }, { r[1], r[2] })
    assert.are.equal("done", r[3], "the reader was left parked on the closed connection")
    assert.are.same({ nil, "closed", n = 2 }, r[4])
  end)

  it("connect's pool_size option sizes the pool for setkeepalive()", function()
    local ids = run(server, [[
      local socks, ids = {}, {}
      for i = 1, 3 do
        socks[i] = upsock({ pool = "size-h", pool_size = 1 })
        ids[i] = cmd(socks[i], "ID")
      end
      for i = 1, 3 do assert(socks[i]:setkeepalive()) end
      return ids
    ]])[1]
    assert.is_truthy(up:wait_gone(ids[1]), "a pool of size 1 kept " .. ids[1])
    assert.is_truthy(up:wait_gone(ids[2]), "a pool of size 1 kept " .. ids[2])
    assert.is_false(up:saw("eof", ids[3]))
  end)

  it("setkeepalive while another task reads the socket: \"socket busy\"", function()
    local r = run(server, [[
      local s = upsock()
      s:send("SLEEP 100 x\n")
      local a = moonring.spawn(function() return s:receive() end)
      moonring.sleep(0.02)
      local k = table.pack(s:setkeepalive())
      return k, a:join()
    ]])
    assert.are.same({ { nil, "socket busy", n = 2 }, "x", n = 2 }, r)
  end)

  it("a unix path too long for sun_path fails instead of reaching a truncated path", function()
    -- a second upstream on a path of exactly 107 bytes (sun_path holds 108 with its NUL)
    local dir = helper.tmpdir("longpath")
    local path = dir .. "/" .. ("u"):rep(107 - #dir - 1)
    assert.are.equal(107, #path)
    local up2 = cs.start_upstream(path)
    finally(function() up2:stop() end)
    local r = run(server, string.format([[
      local s = moonring.tcp()
      s:settimeout(2000)
      local ok, err = s:connect(%q)
      return ok, err, ok and cmd(s, "PING")
    ]], "unix:" .. path .. "-another-socket"))
    assert.is_nil(r[1], "connected to " .. path .. " when asked for " .. path .. "-another-socket")
  end)
end)
