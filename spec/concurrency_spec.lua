-- Requests wait without blocking each other (DESIGN.md section 3): many
-- clients on a sleeping route are all answered in about one sleep.
local helper = require "helper"
local socket = require "socket"

local APP = {
  ["sleep.lua"] = [[
local moonring = require "moonring"
return function(req)
  moonring.sleep(0.5)
  return { status = 200, body = "slept " .. req.uri .. "\n" }
end
]],
  ["index.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],
}

-- Opens n connections, sends one GET each, then reads all responses with
-- socket.select. Returns the responses (by client index) and the elapsed time.
local function fan_out(port, n, path_for, limit)
  local started = helper.now()
  local clients, by_sock = {}, {}
  for i = 1, n do
    local c = assert(socket.tcp())
    c:settimeout(5)
    assert(c:connect(helper.host, port))
    c:settimeout(0)
    local req = "GET " .. path_for(i) .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    local sent = assert(c:send(req))
    assert.are.equal(#req, sent)
    clients[i] = { sock = c, parts = {}, done = false }
    by_sock[c] = clients[i]
  end
  local pending = n
  local deadline = started + limit + 3
  while pending > 0 and helper.now() < deadline do
    local readable = {}
    for _, cl in ipairs(clients) do
      if not cl.done then readable[#readable + 1] = cl.sock end
    end
    local ready = socket.select(readable, nil, 0.5)
    for _, s in ipairs(ready) do
      local cl = by_sock[s]
      while true do
        local data, err, partial = s:receive(8192)
        local got = data or partial
        if got and #got > 0 then cl.parts[#cl.parts + 1] = got end
        if not data then
          if err ~= "timeout" then
            cl.done = true
            pending = pending - 1
            s:close()
          end
          break
        end
      end
    end
  end
  local elapsed = helper.now() - started
  for _, cl in ipairs(clients) do if not cl.done then cl.sock:close() end end
  local responses = {}
  for i, cl in ipairs(clients) do
    responses[i] = cl.done and table.concat(cl.parts) or nil
  end
  return responses, elapsed
end

describe("concurrency", function()
  it("answers 200 clients of a route sleeping 0.5 s all with 200 within 2 s", function()
    helper.with_server({ files = APP, args = { "--access-log", "off" } }, function(server)
      local limit = 2 * helper.slow
      local responses, elapsed = fan_out(server.port, 200, function(i) return "/sleep?c=" .. i end, limit)
      local ok = 0
      for i = 1, 200 do
        local text = responses[i]
        assert.is_truthy(text, "client " .. i .. " got no complete response")
        local res = helper.parse_response(text)
        assert.are.equal(200, res.status, "client " .. i)
        assert.are.equal("slept /sleep\n", res.body)
        ok = ok + 1
      end
      assert.are.equal(200, ok)
      assert.is_true(elapsed >= 0.5, "answered before the sleep ended: " .. elapsed)
      assert.is_true(elapsed < limit, string.format("200 sleeping requests took %.2f s (limit %d s)", elapsed, limit))
    end)
  end)

  it("keeps serving when clients leave while their handlers sleep", function()
    helper.with_server({ files = APP, args = { "--access-log", "off" } }, function(server)
      for _ = 1, 20 do
        local c = helper.connect(server.port)
        c:send("GET /sleep HTTP/1.1\r\nHost: x\r\n\r\n")
        c:close()
      end
      local c = helper.connect(server.port)
      c:send("POST /sleep HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf a bo")
      c:close()
      helper.sleep(0.7) -- past the sleeps: the server resumes and finds no client
      helper.assert_serves(server.port, "/")
      local res = helper.get(server.port, "/sleep")
      assert.are.equal(200, res.status)
    end)
  end)

  it("serves a fast route while many requests are sleeping", function()
    helper.with_server({ files = APP, args = { "--access-log", "off" } }, function(server)
      local sleepers = {}
      finally(function() for _, c in ipairs(sleepers) do c:close() end end)
      for i = 1, 50 do
        local c = helper.connect(server.port)
        c:send("GET /sleep HTTP/1.1\r\nHost: x\r\n\r\n")
        sleepers[i] = c
      end
      local t0 = helper.now()
      local res = helper.get(server.port, "/")
      assert.are.equal(200, res.status)
      assert.is_true(helper.now() - t0 < 0.4, "fast route waited for the sleepers")
      for _, c in ipairs(sleepers) do assert.are.equal(200, c:response().status) end
    end)
  end)
end)
