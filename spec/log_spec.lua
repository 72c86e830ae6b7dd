-- Access and error logs (contract "Access log line"): one line per request,
-- on stderr by default, to a file with --access-log PATH, none with off.
local helper = require "helper"

local APP = {
  ["hello.lua"] = [[return function(req)
  return { status = 200, headers = { ["x-id"] = tostring(req.id) }, body = "Hello, World!" }
end]],
  ["boom.lua"] = [[return function(req) error("logged-boom-5e1d") end]],
}

local LINE = '^(%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ) (%S+) "([^"]*)" (%d+) (%d+) ([%d.]+)ms id=(%d+)$'

local function access_lines(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if line:match(LINE) then out[#out + 1] = line end
  end
  return out
end

describe("access log", function()
  it("writes one line per request on stderr by default", function()
    helper.with_server({ files = APP }, function(server)
      local res = helper.get(server.port, "/hello?x=1")
      assert.are.equal(200, res.status)
      assert.is_truthy(server:wait_stderr('"GET /hello%?x=1 HTTP/1%.1"'), "no access line:\n" .. server:stderr_text())
      local lines = access_lines(server:stderr_text())
      assert.are.equal(1, #lines, server:stderr_text())
      local _, addr, reqline, status, bytes, _, id = lines[1]:match(LINE)
      assert.are.equal("127.0.0.1", addr)
      assert.are.equal("GET /hello?x=1 HTTP/1.1", reqline)
      assert.are.equal("200", status)
      assert.are.equal("13", bytes)
      assert.are.equal(res.headers["x-id"], id)
    end)
  end)

  it("counts the body bytes of the server's own 500 and 504 answers", function()
    helper.with_server({ files = {
      ["boom.lua"] = [[return function(req) error("x") end]],
      ["never.lua"] = [[return function(req, respond, raise) end]],
    }, args = { "--request-timeout", "0.3" } }, function(server)
      local r500 = helper.get(server.port, "/boom")
      local r504 = helper.get(server.port, "/never")
      assert.are.equal(500, r500.status)
      assert.are.equal(504, r504.status)
      assert.is_truthy(server:wait_stderr('"GET /never HTTP/1%.1" 504'), server:stderr_text())
      local text = server:stderr_text()
      assert.matches('"GET /boom HTTP/1%.1" 500 ' .. #r500.body .. ' ', text)
      assert.matches('"GET /never HTTP/1%.1" 504 ' .. #r504.body .. ' ', text)
    end)
  end)

  it("writes to the file given with --access-log PATH", function()
    local dir = helper.tmpdir("log")
    local path = dir .. "/access.log"
    helper.with_server({ files = APP, args = { "--access-log", path } }, function(server)
      assert.are.equal(200, helper.get(server.port, "/hello").status)
      assert.are.equal(404, helper.get(server.port, "/missing").status)
      local deadline = helper.now() + 2 * helper.slow
      local lines
      repeat
        lines = access_lines(helper.read_file(path) or "")
        if #lines >= 2 then break end
        helper.sleep(0.02)
      until helper.now() > deadline
      assert.are.equal(2, #lines, helper.read_file(path) or "(no file)")
      assert.matches('"GET /hello HTTP/1%.1" 200 ', lines[1])
      assert.matches('"GET /missing HTTP/1%.1" 404 ', lines[2])
      assert.are.equal(0, #access_lines(server:stderr_text()))
    end)
  end)

  it("writes no access lines with --access-log off", function()
    helper.with_server({ files = APP, args = { "--access-log", "off" } }, function(server)
      assert.are.equal(200, helper.get(server.port, "/hello").status)
      helper.sleep(0.2)
      assert.are.same({}, access_lines(server:stderr_text()))
    end)
  end)

  it("logs a 500 both as an [error] line with the request id and as an access line", function()
    helper.with_server({ files = APP }, function(server)
      assert.are.equal(500, helper.get(server.port, "/boom").status)
      assert.is_truthy(server:wait_stderr('"GET /boom HTTP/1%.1" 500'), server:stderr_text())
      local text = server:stderr_text()
      local id = access_lines(text)[1]:match("id=(%d+)$")
      assert.matches("%[error%] request " .. id .. " GET /boom", text)
    end)
  end)
end)
