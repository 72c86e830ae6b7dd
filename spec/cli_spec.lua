-- Command line (contract "Usage"): --version, --help, unknown options,
-- a missing APP, and the `listening on` line.
local helper = require "helper"

local HELLO = { ["index.lua"] = [[return function(req) return { status = 200, body = "hi" } end]] }

describe("moonring command line", function()
  it("prints its version and exits 0 with --version", function()
    local r = helper.run { "--version" }
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("%d+%.%d+%.%d+", r.stdout)
  end)

  it("prints usage listing the options and exits 0 with --help", function()
    local r = helper.run { "--help" }
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("[Uu]sage", r.stdout)
    for _, opt in ipairs { "--host", "--port", "--dev", "--max-body-size", "--header-timeout", "--grace" } do
      assert.is_truthy(r.stdout:find(opt, 1, true), "--help does not mention " .. opt)
    end
  end)

  it("prints usage on stderr and exits 2 for an unknown option", function()
    local r = helper.run { "--no-such-option", "handlers" }
    assert.are.equal(2, r.status)
    assert.matches("[Uu]sage", r.stderr)
    assert.are.equal("", r.stdout)
  end)

  it("exports the Lua C API and none of its own functions (C modules bind to Lua only)", function()
    local p = assert(io.popen("nm -D --defined-only " .. helper.shell_quote(helper.bin) .. " 2>&1"))
    local out = p:read("a")
    p:close()
    local functions = 0
    for name in out:gmatch("%x+ [TW] ([%w_@%.]+)") do
      functions = functions + 1
      assert.is_truthy(name:match("^lua_") or name:match("^luaL_") or name:match("^luaopen_"),
        "exported: " .. name)
    end
    assert.is_true(functions > 100, out)         -- the Lua API is there (cjson needs it)
  end)

  it("exits 2 for an option missing its value", function()
    local r = helper.run { "--port" }
    assert.are.equal(2, r.status)
  end)

  it("exits 1 naming the APP when it does not exist", function()
    local r = helper.run { "--port", "0", "/nonexistent/moonring-app" }
    assert.are.equal(1, r.status)
    assert.is_truthy(r.stderr:find("/nonexistent/moonring-app", 1, true), "stderr: " .. r.stderr)
    assert.are.equal("", r.stdout)
  end)

  it("prints exactly one line 'listening on http://HOST:PORT' with the real port", function()
    helper.with_server({ files = HELLO }, function(server)
      assert.are.equal("127.0.0.1", server.host)
      assert.is_true(server.port > 0)
      assert.are.equal("listening on http://127.0.0.1:" .. server.port .. "\n", server:stdout_text())
      assert.are.equal(200, helper.get(server.port, "/").status)
    end)
  end)

  it("binds the host given with --host", function()
    helper.with_server({ files = HELLO, args = { "--host", "127.0.0.1" } }, function(server)
      assert.are.equal("listening on http://127.0.0.1:" .. server.port .. "\n", server:stdout_text())
      assert.are.equal("hi", helper.get(server.port, "/").body)
    end)
  end)

  it("exits 2 for bad values of the async core's limits", function()
    for _, args in ipairs {
      { "--max-inflight", "0" }, { "--max-inflight", "x" }, { "--cpu-budget", "-1" },
      { "--cpu-budget", "soon" }, { "--write-buffer", "100" },
    } do
      local r = helper.run { "--port", "0", args[1], args[2], "handlers" }
      assert.are.equal(2, r.status, table.concat(args, " ") .. " accepted; stderr: " .. r.stderr)
      assert.matches(args[1], r.stderr, 1, true)
    end
  end)

  it("accepts k and m suffixes for --max-body-size", function()
    helper.with_server({ files = HELLO, args = { "--max-body-size", "64k" } }, function(server)
      assert.are.equal(200, helper.request(server.port, "POST", "/", { body = string.rep("x", 64 * 1024) }).status)
      assert.are.equal(413, helper.request(server.port, "POST", "/", { body = string.rep("x", 64 * 1024 + 1) }).status)
    end)
    helper.with_server({ files = HELLO, args = { "--max-body-size", "1m" } }, function(server)
      assert.are.equal(200, helper.request(server.port, "POST", "/", { body = string.rep("x", 1024 * 1024) }).status)
    end)
  end)
end)
