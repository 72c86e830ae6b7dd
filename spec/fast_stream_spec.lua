-- A streamed body to a client that reads as fast as the server writes: the
-- writer never has to wait for room, yet memory stays bounded, the CPU
-- budget does not take the stream for a runaway loop, and other clients are
-- served while it runs (the writer gives the loop a turn). curl is the fast
-- reader, started in the background and stopped by its pid.
local helper = require "helper"

local APP = {
  ["big.lua"] = [[
local moonring = require "moonring"
local state = require "_state"
local chunk = string.rep("x", 65536)
return function(req)
  local mib = tonumber(req.query_string and req.query_string:match("mib=(%d+)")) or 64
  state.written, state.total = 0, mib * 16
  return { headers = { ["content-type"] = "application/octet-stream" },
    body = moonring.stream(function(out)
      for i = 1, mib * 16 do
        if not out:write(chunk) then return end
        state.written = i
      end
    end) }
end]],
  ["_state.lua"] = [[return { written = 0, total = 0 }]],
  ["progress.lua"] = [[
local state = require "_state"
return function(req) return { body = state.written .. "/" .. state.total } end]],
  ["hello.lua"] = [[return function(req) return { body = "hello\n" } end]],
  ["fan.lua"] = [[
local moonring = require "moonring"
local state = require "_state"
state.outs = {}
return function(req)
  return { body = moonring.stream(function(out)
    state.outs[#state.outs + 1] = out
    moonring.channel():take()             -- until the client leaves
  end) }
end]],
  ["publish.lua"] = [[
local state = require "_state"
return function(req)
  local results = {}
  for i, out in ipairs(state.outs) do
    local ok, err = out:try_write(string.rep("y", 1048576))
    results[i] = tostring(ok) .. ":" .. tostring(err)
  end
  return { body = table.concat(results, " ") }
end]],
}

local function vm_hwm_kib(pid)
  local text = helper.read_file("/proc/" .. pid .. "/status") or ""
  return tonumber(text:match("VmHWM:%s+(%d+)"))
end

-- Starts curl reading `url` into /dev/null in the background; returns a
-- function that waits for it (bounded) and returns its "code size" output,
-- and its pid file for stopping it.
local function curl_bg(url, dir)
  local out, pidf = dir .. "/curl.out", dir .. "/curl.pid"
  assert(os.execute(string.format(
    "{ curl -s -o /dev/null -w '%%{http_code} %%{size_download}' %s >%s 2>&1 & echo $! >%s; } ",
    helper.shell_quote(url), helper.shell_quote(out), helper.shell_quote(pidf))))
  local pid
  for _ = 1, 100 do
    pid = (helper.read_file(pidf) or ""):match("%d+")
    if pid then break end
    helper.sleep(0.01)
  end
  local function stop() os.execute("kill " .. pid .. " 2>/dev/null") end
  local function wait(timeout)
    local deadline = helper.now() + timeout
    while helper.now() < deadline do
      if not os.execute("kill -0 " .. pid .. " 2>/dev/null") then return helper.read_file(out) end
      helper.sleep(0.05)
    end
    stop()
    return nil
  end
  return wait, stop
end

describe("a stream to a client that keeps up", function()
  it("is sent whole with bounded memory, and a short CPU budget does not stop it", function()
    helper.with_server({ files = APP, args = { "--cpu-budget", "0.2", "--access-log", "off" } }, function(server)
      local before = vm_hwm_kib(server.pid)
      local wait = curl_bg(server.url .. "/big?mib=1024", helper.tmpdir("curl"))
      local got = wait(60 * helper.slow)
      assert.are.equal("200 " .. (1024 * 1024 * 1024), got)
      local growth = vm_hwm_kib(server.pid) - before
      assert.is_true(growth < 64 * 1024, "peak RSS grew by " .. growth .. " KiB streaming 1 GiB")
      assert.is_nil(server:stderr_text():find("cpu budget", 1, true), server:stderr_text())
    end)
  end)

  it("lets other clients be served while it runs", function()
    helper.with_server({ files = APP, args = { "--access-log", "off" } }, function(server)
      local wait, stop = curl_bg(server.url .. "/big?mib=16384", helper.tmpdir("curl"))
      finally(stop)
      local progress
      for _ = 1, 200 do                       -- the stream has started
        progress = helper.get(server.port, "/progress").body
        if progress:match("^(%d+)") ~= "0" then break end
        helper.sleep(0.01)
      end
      local res = helper.get(server.port, "/hello")
      assert.are.equal("hello\n", res.body)
      local written, total = helper.get(server.port, "/progress").body:match("(%d+)/(%d+)")
      assert.is_true(tonumber(written) < tonumber(total), "the stream was over before /hello was answered")
      stop()
      wait(5)
    end)
  end)
end)

describe("out:try_write", function()
  it("writes to a client with room and answers false, \"full\" without writing for one that is behind", function()
    helper.with_server({ files = APP, args = { "--write-buffer", "16k" } }, function(server)
      local fast = helper.connect(server.port)
      local slow = helper.connect(server.port, { rcvbuf = 4096 })
      fast:send("GET /fan HTTP/1.1\r\nHost: x\r\n\r\n")
      slow:send("GET /fan HTTP/1.1\r\nHost: x\r\n\r\n")
      helper.sleep(0.2)
      local results
      for _ = 1, 40 do                        -- the slow client never reads
        results = helper.get(server.port, "/publish").body
        if results:find("false:full", 1, true) then break end
        fast.sock:settimeout(0.05)
        repeat local data = fast.sock:receive(65536) until not data
      end
      assert.matches("true:nil", results)
      assert.matches("false:full", results)
      fast:close()
      slow:close()
    end)
  end)
end)
