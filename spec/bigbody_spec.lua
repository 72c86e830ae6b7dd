-- A big string body costs its own size, not a copy: when the socket cannot
-- take it at once, the server writes the rest from the Lua string itself,
-- and gives the memory back once the client has it (a full GC and
-- malloc_trim). Measured from /proc: the peak RSS while a slow reader takes
-- 200 MiB (VmHWM, reset through clear_refs once the handler has built the
-- body), and VmRSS after the client left. The ASan build keeps freed memory
-- in its quarantine and pads every block, so there the figures say nothing
-- about the server: it checks the bytes and that nothing leaks or breaks.
local helper = require "helper"
local socket = require "socket"

local MIB = 1024 * 1024

local APP = {
  ["big.lua"] = [[
local moonring = require "moonring"
return function(req)
  local n = tonumber(req.query_string:match("mib=(%d+)")) * 1048576
  local body = string.rep(string.rep("x", 1048576), n // 1048576)
  collectgarbage()      -- what building it left behind goes now: only the body stays
  local st = moonring.state("big")
  st.built = (st.built or 0) + 1
  moonring.sleep(tonumber(req.query_string:match("wait=([%d.]+)") or "0"))
  return { status = 200, headers = { ["content-type"] = "application/octet-stream" }, body = body }
end]],
  ["built.lua"] = [[
local moonring = require "moonring"
return function(req)
  return { status = 200, body = tostring(moonring.state("big").built or 0) }
end]],
}

local function status_kib(pid, field)
  local f = assert(io.open("/proc/" .. pid .. "/status"))
  local text = f:read("a")
  f:close()
  return tonumber(text:match(field .. ":%s*(%d+) kB"))
end

local function reset_peak(pid)
  local f = assert(io.open("/proc/" .. pid .. "/clear_refs", "w"))
  f:write("5")
  f:close()
end

-- Reads the response: its head, then `want` body bytes, slowly for the first
-- `slow_for` seconds (a few KiB at a time with pauses), then at full speed.
local function read_slowly(conn, slow_for)
  local sock = conn.sock
  sock:settimeout(30 * helper.slow)
  local head = {}
  while true do
    local line = assert(sock:receive("*l"))
    if line == "" then break end
    head[#head + 1] = line
  end
  local want = tonumber(table.concat(head, "\n"):match("[Cc]ontent%-[Ll]ength: (%d+)"))
  local got, t0 = 0, helper.now()
  while got < want do
    local n = math.min(helper.now() - t0 < slow_for and 16384 or 1048576, want - got)
    local data, err, partial = sock:receive(n)
    local piece = data or partial
    assert(piece and #piece > 0, "body cut after " .. got .. " bytes: " .. tostring(err))
    assert(not piece:find("[^x]"), "body bytes are not the ones sent")
    got = got + #piece
    if helper.now() - t0 < slow_for then socket.sleep(0.05) end
  end
  return head[1], want, got
end

describe("a 200 MiB string body to a slow reader", function()
  it("is written from the Lua string itself, and its memory goes back afterwards", function()
    -- building 200 MiB in Lua takes about a second of CPU by itself
    helper.with_server({ files = APP, args = { "--access-log", "off", "--cpu-budget", "10" } }, function(server)
      assert.are.equal("0", helper.get(server.port, "/built").body)
      local baseline = status_kib(server.pid, "VmRSS")

      local conn = helper.connect(server.port, { rcvbuf = 65536 })
      assert(conn:send("GET /big?mib=200&wait=3 HTTP/1.1\r\nHost: x\r\n\r\n"))
      -- the handler has built its body and sleeps: measure from here
      assert.is_truthy(helper.eventually(function()
        return helper.get(server.port, "/built").body == "1"
      end, 10 * helper.slow), "the handler never built its body")
      local with_body = status_kib(server.pid, "VmRSS")
      reset_peak(server.pid)

      local status, want, got = read_slowly(conn, 2)
      assert.are.equal("HTTP/1.1 200 OK", status)
      assert.are.equal(200 * MIB, want)
      assert.are.equal(want, got)
      local peak = status_kib(server.pid, "VmHWM")
      conn:close()

      if not helper.sanitized then
        assert.is_true(with_body - baseline > 190 * 1024,
          "the body was not in memory when measured: " .. (with_body - baseline) .. " KiB")
        assert.is_true(peak <= with_body + 10 * 1024,
          string.format("peak RSS %d KiB while sending, %d KiB with the body built: more than 10 MiB over",
            peak, with_body))
        local after = helper.eventually(function()
          local rss = status_kib(server.pid, "VmRSS")
          return rss <= baseline + 10 * 1024 and rss
        end, 5 * helper.slow)
        assert.is_truthy(after, string.format("RSS %d KiB after the client left, %d KiB before the request",
          status_kib(server.pid, "VmRSS"), baseline))
      end
      helper.assert_serves(server.port, "/built")
    end)
  end)
end)
