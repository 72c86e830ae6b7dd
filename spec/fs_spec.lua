-- moonring.fs (docs/io.md, "Files"): read, write, stat and list on libuv's
-- thread pool, the calling task parked; errors are nil, "path: ENAME:
-- message"; a call that never completes times out while the loop serves,
-- and its late result is dropped.
local helper = require "helper"

local function src(body)
  return "local moonring = require \"moonring\"\nlocal fs = moonring.fs\n" .. helper.DUMP .. body
end

-- A route answering dump(scenario(req, DIR)), DIR a directory of the spec's.
local function scenario(dir, body)
  return src(string.format("local DIR = %q\n", dir)
    .. "local function scenario(req)\n" .. body .. "\nend\n" .. [[
return function(req)
  return { status = 200, body = dump(scenario(req)) }
end
]])
end

local function get_dump(server, path, opts)
  local res = helper.get(server.port, path, opts)
  assert.are.equal(200, res.status, res.body)
  return helper.undump(res.body)
end

local function app(dir)
  return {
    ["hello.lua"] = [[return function(req) return { status = 200, body = "hello\n" } end]],

    ["rw.lua"] = scenario(dir, [[
  local p = DIR .. "/a.txt"
  local r = {}
  r.write = { fs.write(p, "hello") }
  r.read = { fs.read(p) }
  r.append = { fs.write(p, " world", { append = true }) }
  r.appended = fs.read(p)
  r.replace = { fs.write(p, "x", { timeout = 5 }) }
  r.replaced = fs.read(p, { timeout = 5 })
  r.empty = { fs.write(DIR .. "/empty", "") }
  r.read_empty = { fs.read(DIR .. "/empty") }
  r.private = { fs.write(DIR .. "/private", "p", { mode = tonumber("600", 8) }) }
  r.private_mode = fs.stat(DIR .. "/private").mode
  local big = string.rep("0123456789abcdef", 5 * 65536)   -- 5 MiB
  r.big_write = fs.write(DIR .. "/big", big)
  local back = fs.read(DIR .. "/big")
  r.big_same = back == big
  r.big_len = #back
  r.proc = #(fs.read("/proc/self/status") or "") > 0    -- says size 0: read to EOF
  return r
]]),

    ["stat.lua"] = scenario(dir, [[
  assert(fs.write(DIR .. "/s.txt", "12345"))
  local f = fs.stat(DIR .. "/s.txt")
  local d = fs.stat(DIR)
  return { f = f, d = d, now = os.time(), mtime_type = math.type(f.mtime) }
]]),

    ["list.lua"] = scenario(dir, [[
  local sub = DIR .. "/tree"
  os.execute("mkdir -p " .. sub .. "/b-dir && ln -sf a.txt " .. sub .. "/c-link")
  assert(fs.write(sub .. "/a.txt", "a"))
  return { entries = fs.list(sub) }
]]),

    ["errors.lua"] = scenario(dir, [[
  local missing = DIR .. "/missing"
  return {
    read = { fs.read(missing) },
    stat = { fs.stat(missing) },
    list = { fs.list(missing) },
    write = { fs.write(missing .. "/x/y", "z") },
    read_dir = { fs.read(DIR) },
    list_file = { fs.list(DIR .. "/a.txt") },
  }
]]),

    ["misuse.lua"] = scenario(dir, [[
  local function try(f, ...) return select(2, pcall(f, ...)) end
  return {
    path = try(fs.read, {}),
    data = try(fs.write, DIR .. "/m", {}),
    append = try(fs.write, DIR .. "/m", "x", { append = "yes" }),
    mode = try(fs.write, DIR .. "/m", "x", { mode = 1.5 }),
    timeout = try(fs.stat, DIR, { timeout = 0 }),
    opts = try(fs.list, DIR, "fast"),
    first = try(fs.stat, {}, "fast"),
  }
]]),

    -- a FIFO: open() waits for a writer, so the read never completes alone
    ["fifo.lua"] = scenario(dir, [[
  local t0 = moonring.now()
  local a, b = fs.read(DIR .. "/fifo", { timeout = 0.3 })
  return { a = a, b = b, elapsed = moonring.now() - t0 }
]]),

    ["fifo_wait.lua"] = scenario(dir, [[
  return { fs.read(DIR .. "/fifo", { timeout = 30 }) }
]]),
  }
end

describe("moonring.fs", function()
  it("writes, appends, replaces and reads files", function()
    local dir = helper.tmpdir("fs")
    helper.with_server({ files = app(dir) }, function(server)
      local r = get_dump(server, "/rw")
      assert.are.same({ true }, r.write)
      assert.are.same({ "hello" }, r.read)
      assert.are.same({ true }, r.append)
      assert.are.equal("hello world", r.appended)
      assert.are.same({ true }, r.replace)
      assert.are.equal("x", r.replaced)
      assert.are.same({ true }, r.empty)
      assert.are.same({ "" }, r.read_empty)
      assert.are.same({ true }, r.private)
      assert.are.equal(tonumber("600", 8), r.private_mode)
      assert.is_true(r.big_write)
      assert.is_true(r.big_same)
      assert.are.equal(5 * 1024 * 1024, r.big_len)
      assert.is_true(r.proc)
    end)
    assert.are.equal("x", helper.read_file(dir .. "/a.txt"))
  end)

  it("stats files and directories", function()
    local dir = helper.tmpdir("fs")
    helper.with_server({ files = app(dir) }, function(server)
      local r = get_dump(server, "/stat")
      assert.are.equal(5, r.f.size)
      assert.are.equal("file", r.f.type)
      assert.are.equal("float", r.mtime_type)
      assert.is_true(math.abs(r.f.mtime - r.now) < 60)
      assert.are.equal("number", type(r.f.mode))
      assert.are.equal("directory", r.d.type)
    end)
  end)

  it("lists a directory as sorted { name, type } entries", function()
    local dir = helper.tmpdir("fs")
    helper.with_server({ files = app(dir) }, function(server)
      local r = get_dump(server, "/list")
      assert.are.same({
        { name = "a.txt", type = "file" },
        { name = "b-dir", type = "directory" },
        { name = "c-link", type = "link" },
      }, r.entries)
    end)
  end)

  it("returns nil, \"path: ENAME: message\" for missing paths and wrong kinds", function()
    local dir = helper.tmpdir("fs")
    helper.write_file(dir .. "/a.txt", "a")
    helper.with_server({ files = app(dir) }, function(server)
      local r = get_dump(server, "/errors")
      local missing = dir .. "/missing"
      assert.are.same({ nil, missing .. ": ENOENT: no such file or directory" }, { r.read[1], r.read[2] })
      assert.are.same({ nil, missing .. ": ENOENT: no such file or directory" }, { r.stat[1], r.stat[2] })
      assert.are.same({ nil, missing .. ": ENOENT: no such file or directory" }, { r.list[1], r.list[2] })
      assert.are.equal(missing .. "/x/y: ENOENT: no such file or directory", r.write[2])
      assert.are.equal(dir .. ": EISDIR: illegal operation on a directory", r.read_dir[2])
      assert.are.equal(dir .. "/a.txt: ENOTDIR: not a directory", r.list_file[2])
    end)
  end)

  it("raises a clear error on misuse", function()
    local dir = helper.tmpdir("fs")
    helper.with_server({ files = app(dir) }, function(server)
      local r = get_dump(server, "/misuse")
      assert.matches("bad argument #1 .*string expected, got table", r.path)
      assert.matches("bad argument #2 .*string expected, got table", r.data)
      assert.matches("bad argument #3 .*append must be a boolean", r.append)
      assert.matches("bad argument #3 .*mode must be an integer", r.mode)
      assert.matches("bad argument #2 .*timeout must be a number of seconds > 0", r.timeout)
      assert.matches("bad argument #2 .*table expected, got string", r.opts)
      assert.matches("bad argument #1 .*string expected, got table", r.first)
    end)
  end)

  it("times out while the loop serves; the late result is dropped", function()
    local dir = helper.tmpdir("fs")
    assert(os.execute("mkfifo " .. helper.shell_quote(dir .. "/fifo")))
    helper.with_server({ files = app(dir) }, function(server)
      local r = get_dump(server, "/fifo")
      assert.are.same({ nil, "timeout" }, { r.a, r.b })
      assert.is_true(r.elapsed >= 0.25 and r.elapsed < 1.5 * helper.slow, "elapsed " .. r.elapsed)
      local t0 = helper.now()
      assert.are.equal("hello\n", helper.get(server.port, "/hello").body)
      assert.is_true(helper.now() - t0 < 0.5 * helper.slow)
      -- the open still waits in libuv's pool: a writer lets it end (and
      -- writes nothing: the reader may be gone by then)
      assert(io.open(dir .. "/fifo", "w")):close()
      assert.are.equal("hello\n", helper.get(server.port, "/hello").body)
    end)
  end)

  it("a client leaving during a read does not crash; the next request works", function()
    local dir = helper.tmpdir("fs")
    assert(os.execute("mkfifo " .. helper.shell_quote(dir .. "/fifo")))
    helper.with_server({ files = app(dir) }, function(server)
      local c = helper.connect(server.port)
      c:send(helper.build_request(server.port, "GET", "/fifo_wait"))
      helper.sleep(0.2)
      c:close()
      helper.sleep(0.1)
      assert(io.open(dir .. "/fifo", "w")):close()
      assert.are.equal("hello\n", helper.get(server.port, "/hello").body)
      -- and a read that a writer completes returns what was written
      local waiting = helper.connect(server.port)
      waiting:send(helper.build_request(server.port, "GET", "/fifo_wait"))
      helper.sleep(0.2)
      local w = assert(io.open(dir .. "/fifo", "w"))
      w:write("through the fifo")
      w:close()
      local res = waiting:response({ timeout = 5 * helper.slow })
      assert.are.same({ "through the fifo" }, helper.undump(res.body))
    end)
  end)
end)
