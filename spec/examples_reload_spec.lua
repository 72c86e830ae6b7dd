-- examples/live-reload, served with --watch from a copy (the spec edits its
-- files) and checked over real sockets: an edited app module changes the
-- answers, an SSE stream opened before the edit goes on with the old code,
-- and the state table and on_reload hook count across the reload.
local helper = require "helper"

local q = helper.shell_quote

-- The next "data: VERSION N" line of the stream (chunk-size lines and
-- other fields skipped).
local function next_tick(conn)
  conn.sock:settimeout(5 * helper.slow)
  while true do
    local line, err = conn.sock:receive("*l")
    assert(line, "stream ended: " .. tostring(err))
    local version, n = line:match("^data: (v%d+) (%d+)$")
    if version then return version, tonumber(n) end
  end
end

describe("examples/live-reload", function()
  it("reloads an edited module while an open stream keeps its code", function()
    local dir = helper.app({})
    assert(os.execute("cp -R examples/live-reload/. " .. q(dir)))
    helper.with_server({ app = dir, args = { "--watch" } }, function(server)
      local res = helper.get(server.port, "/hello?name=ada")
      assert.are.equal(200, res.status)
      assert.are.equal("Hello, ada! (v1)\n", res.body)
      assert.are.equal("v1", res.headers["x-code-version"])

      local stream = helper.connect(server.port)
      assert(stream:send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"))
      assert.are.equal("v1", (next_tick(stream)))

      local file = dir .. "/_lib/version.lua"
      local text = assert(io.open(file)):read("a")
      helper.replace_file(file, (text:gsub('"v1"', '"v2"'):gsub('"Hello"', '"Bonjour"')))
      local body = helper.eventually(function()
        local r = helper.get(server.port, "/hello?name=ada")
        return r.body:find("v2", 1, true) and r.body
      end, 3 * helper.slow)
      assert.are.equal("Bonjour, ada! (v2)\n", body)

      -- The stream started on v1 goes on with v1, tick after tick.
      local _, n1 = next_tick(stream)
      local version, n2 = next_tick(stream)
      assert.are.equal("v1", version)
      assert.is_true(n2 > n1)
      stream:close()

      local index = helper.get(server.port, "/").body
      assert.matches("code version:%s+v2", index)
      assert.matches("reloads seen:%s+1 ", index)
      local seen = tonumber(index:match("requests seen:%s+(%d+)"))
      assert.is_true(seen >= 4, index)          -- counted before and after the reload

      local log = server:stderr_text()
      assert.is_falsy(log:find("[error]", 1, true), log)
      assert.is_falsy(log:find("[warn]", 1, true), log)
    end)
    helper.remove(dir)
  end)
end)
