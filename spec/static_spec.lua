-- moonring.file (the sendfile body kind) and moonring.static (docs/middleware.md):
-- bodies exact at any size and for a slow reader, HEAD sends nothing,
-- missing files are nil, msg; static's conditional GET, ranges,
-- precompressed siblings, index files and redirects, fall-through to the
-- routes, and every way out of the root answered 404 — each under a sync
-- and an async handler.
local helper = require "helper"
local socket = require "socket"

local function bytes(n, seed)
  local t, x = {}, seed
  for i = 1, n do
    x = (x * 1103515245 + 12345) % 2147483648
    t[i] = string.char(x % 256)
  end
  return table.concat(t)
end

local SMALL = bytes(4096, 7)

local function sh(cmd) assert(os.execute(cmd), cmd) end

describe("moonring.file", function()
  local server, dir

  lazy_setup(function()
    dir = helper.tmpdir("files")
    local f = assert(io.open(dir .. "/small.bin", "wb")); f:write(SMALL); f:close()
    -- 24 MiB: more than the loopback socket buffers hold, so a client
    -- that does not read makes the rest wait in the request's task
    sh("head -c 25165824 /dev/urandom > " .. dir .. "/big.bin")
    sh("mkdir " .. dir .. "/adir")
    local app = helper.app({
      ["f.lua"] = string.format([[
local moonring = require "moonring"
local DIR = %q
return function(req)
  local f, err = moonring.file(DIR .. "/" .. (req.query_string or "small.bin"))
  if not f then return { status = 404, body = err } end
  return { status = 200, headers = { ["content-type"] = "application/octet-stream" }, body = f }
end
]], dir),
      ["part.lua"] = string.format([[
local moonring = require "moonring"
local DIR = %q
return function(req)
  local f, err = moonring.file(DIR .. "/small.bin", { offset = 10, length = 20 })
  local bad = { moonring.file(DIR .. "/small.bin", { offset = 5000 }) }
  return { status = 200, headers = { ["x-bad"] = tostring(bad[2]), ["x-len"] = f:length() }, body = f }
end
]], dir),
      ["twice.lua"] = string.format([[
local moonring = require "moonring"
local f = moonring.file(%q)
return function(req) return { status = 200, body = f } end
]], dir .. "/small.bin"),
      ["async.lua"] = string.format([[
local moonring = require "moonring"
return function(req, respond, raise)
  moonring.spawn(function()
    moonring.sleep(0.01)
    respond({ status = 200, body = moonring.file(%q) })
  end)
end
]], dir .. "/small.bin"),
      ["hello.lua"] = [[return function(req) return { status = 200, body = "hello\n" } end]],
    })
    server = helper.start({ app = app })
  end)

  lazy_teardown(function() if server then server:stop() end end)

  it("sends a file exactly, with Content-Length", function()
    local res = helper.get(server.port, "/f")
    assert.are.equal(200, res.status)
    assert.are.equal("4096", res.headers["content-length"])
    assert.is_true(res.body == SMALL)
  end)

  it("sends a file from an async handler's respond", function()
    local res = helper.get(server.port, "/async")
    assert.are.equal(200, res.status)
    assert.is_true(res.body == SMALL)
  end)

  it("sends a part of a file given offset and length, and refuses a range outside it", function()
    local res = helper.get(server.port, "/part")
    assert.are.equal(200, res.status)
    assert.are.equal("20", res.headers["content-length"])
    assert.are.equal(SMALL:sub(11, 30), res.body)
    assert.truthy(res.headers["x-bad"]:find("outside the file", 1, true))
  end)

  it("sends nothing for HEAD, with the length", function()
    local res = helper.request(server.port, "HEAD", "/f")
    assert.are.equal(200, res.status)
    assert.are.equal("4096", res.headers["content-length"])
    assert.are.equal("", res.body)
  end)

  it("returns nil and a message for a missing file or a directory", function()
    local res = helper.get(server.port, "/f?nope.bin")
    assert.are.equal(404, res.status)
    assert.truthy(res.body:find("No such file", 1, true))
    res = helper.get(server.port, "/f?adir")
    assert.are.equal(404, res.status)
    assert.truthy(res.body:find("is a directory", 1, true))
  end)

  it("refuses to send the same file object twice (500, logged), and serves on", function()
    assert.are.equal(200, helper.get(server.port, "/twice").status)
    local res = helper.get(server.port, "/twice")
    assert.are.equal(500, res.status)
    helper.eventually(function()
      return helper.read_file(server.stderr_path):find("sent or closed already", 1, true)
    end)
    assert.are.equal(200, helper.get(server.port, "/hello").status)
  end)

  it("sends a big file to a client that reads late, while others are served", function()
    local c = assert(socket.connect(helper.host, server.port))
    c:settimeout(10 * helper.slow)
    assert(c:send("GET /f?big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    socket.sleep(0.3)                      -- the server fills the socket and waits
    local t0 = helper.now()
    assert.are.equal(200, helper.get(server.port, "/hello").status)
    assert.is_true(helper.now() - t0 < 1 * helper.slow)
    local data = assert(c:receive("*a"))
    c:close()
    local body = data:match("\r\n\r\n(.*)$")
    assert.are.equal(25165824, #body)
    assert.is_true(body == helper.read_file(dir .. "/big.bin"))
  end)

  it("closes a big file's connection cleanly when the client leaves mid-body", function()
    local c = assert(socket.connect(helper.host, server.port))
    assert(c:send("GET /f?big.bin HTTP/1.1\r\nHost: x\r\n\r\n"))
    socket.sleep(0.2)
    c:close()
    helper.eventually(function()
      return helper.read_file(server.stderr_path):find('"GET /f%?big.bin HTTP/1.1" 200')
        or helper.read_file(server.stdout_path):find('"GET /f%?big.bin HTTP/1.1" 200')
    end)
    assert.are.equal(200, helper.get(server.port, "/hello").status)
  end)
end)

for _, shape in ipairs({ "sync", "async" }) do
  describe("moonring.static around a " .. shape .. " handler", function()
    local server, app, outside

    lazy_setup(function()
      outside = helper.tmpdir("outside")
      local f = assert(io.open(outside .. "/passwd", "w")); f:write("secret\n"); f:close()
      local route = shape == "sync"
        and [[return function(req) return { status = 200, body = "route " .. req.uri .. "\n" } end]]
        or [[return function(req, respond, raise) respond({ status = 200, body = "route " .. req.uri .. "\n" }) end]]
      app = helper.app({
        ["_middleware.lua"] = [[return require("moonring").static{ max_age = 60 }]],
        ["hello.lua"] = route,
        ["api/_middleware.lua"] = [[return function(h) return h end]],
        ["api/[id].lua"] = route,
        ["public/4k.bin"] = SMALL,
        ["public/style.css"] = "body { color: red }\n",
        ["public/index.html"] = "<h1>home</h1>\n",
        ["public/docs/index.html"] = "<h1>docs</h1>\n",
        ["public/hello"] = "a file named like a route\n",
        ["public/app.js"] = "console.log('plain')\n",
        ["public/app.js.gz"] = "GZ-BYTES",
        ["public/app.js.br"] = "BR-BYTES",
        ["public/q.lua"] = "return 1\n",
      })
      sh("ln -s " .. outside .. "/passwd " .. app .. "/public/link-out")
      sh("ln -s " .. outside .. " " .. app .. "/public/dir-out")
      sh("ln -s style.css " .. app .. "/public/link-in")
      server = helper.start({ app = app })
    end)

    lazy_teardown(function() if server then server:stop() end end)

    local function get(path, headers) return helper.get(server.port, path, { headers = headers }) end

    it("serves a file with its type, ETag, Last-Modified and Cache-Control", function()
      local res = get("/style.css")
      assert.are.equal(200, res.status)
      assert.are.equal("body { color: red }\n", res.body)
      assert.are.equal("text/css; charset=utf-8", res.headers["content-type"])
      assert.truthy(res.headers.etag:match('^"%x+%-%x+"$'))
      assert.truthy(res.headers["last-modified"]:match("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$"))
      assert.are.equal("public, max-age=60", res.headers["cache-control"])
      assert.are.equal("bytes", res.headers["accept-ranges"])
      assert.is_true(get("/4k.bin").body == SMALL)
    end)

    it("answers 304 on a matching ETag and on If-Modified-Since, 200 otherwise", function()
      local first = get("/style.css")
      local res = get("/style.css", { ["If-None-Match"] = first.headers.etag })
      assert.are.equal(304, res.status)
      assert.are.equal("", res.body)
      assert.are.equal(first.headers.etag, res.headers.etag)
      assert.are.equal(304, get("/style.css", { ["If-None-Match"] = 'W/"x", ' .. first.headers.etag }).status)
      assert.are.equal(200, get("/style.css", { ["If-None-Match"] = '"other"' }).status)
      assert.are.equal(304, get("/style.css", { ["If-Modified-Since"] = first.headers["last-modified"] }).status)
      assert.are.equal(200, get("/style.css", { ["If-Modified-Since"] = "Thu, 01 Jan 1970 00:00:00 GMT" }).status)
    end)

    it("answers 206 for Range: bytes=0-9, suffix and open ranges, and 416 outside", function()
      local res = get("/4k.bin", { Range = "bytes=0-9" })
      assert.are.equal(206, res.status)
      assert.are.equal("bytes 0-9/4096", res.headers["content-range"])
      assert.are.equal(SMALL:sub(1, 10), res.body)
      res = get("/4k.bin", { Range = "bytes=-5" })
      assert.are.equal(206, res.status)
      assert.are.equal(SMALL:sub(-5), res.body)
      res = get("/4k.bin", { Range = "bytes=4000-" })
      assert.are.equal("bytes 4000-4095/4096", res.headers["content-range"])
      assert.are.equal(96, #res.body)
      res = get("/4k.bin", { Range = "bytes=5000-6000" })
      assert.are.equal(416, res.status)
      assert.are.equal("bytes */4096", res.headers["content-range"])
      res = get("/4k.bin", { Range = "bytes=0-1,5-6" })   -- several: the whole file
      assert.are.equal(200, res.status)
      assert.are.equal(4096, #res.body)
      res = get("/4k.bin", { Range = "bytes=0-9", ["If-Range"] = '"stale"' })
      assert.are.equal(200, res.status)
    end)

    it("sends a precompressed sibling the client accepts, with Vary", function()
      local res = get("/app.js", { ["Accept-Encoding"] = "gzip, deflate, br" })
      assert.are.equal("BR-BYTES", res.body)
      assert.are.equal("br", res.headers["content-encoding"])
      assert.are.equal("Accept-Encoding", res.headers.vary)
      assert.are.equal("text/javascript; charset=utf-8", res.headers["content-type"])
      res = get("/app.js", { ["Accept-Encoding"] = "gzip;q=1, br;q=0" })
      assert.are.equal("GZ-BYTES", res.body)
      assert.are.equal("gzip", res.headers["content-encoding"])
      res = get("/app.js")
      assert.are.equal("console.log('plain')\n", res.body)
      assert.is_nil(res.headers["content-encoding"])
    end)

    it("serves index files, redirects a directory without its slash", function()
      assert.are.equal("<h1>home</h1>\n", get("/").body)
      assert.are.equal("<h1>docs</h1>\n", get("/docs/").body)
      local res = get("/docs?x=1")
      assert.are.equal(301, res.status)
      assert.are.equal("/docs/?x=1", res.headers.location)
    end)

    it("sends HEAD without a body", function()
      local res = helper.request(server.port, "HEAD", "/4k.bin")
      assert.are.equal(200, res.status)
      assert.are.equal("4096", res.headers["content-length"])
      assert.are.equal("", res.body)
    end)

    it("falls through to the routes when no file matches, and lets routes' paths be files first", function()
      assert.are.equal("route /api/7\n", get("/api/7").body)
      assert.are.equal("a file named like a route\n", get("/hello").body)
      assert.are.equal(404, get("/nothing-here").status)
      local res = helper.request(server.port, "POST", "/style.css", { body = "x" })
      assert.are.equal(404, res.status)       -- not GET/HEAD: no file, no route
    end)

    it("never serves what is outside the root: .., encoded, backslash, NUL, symlinks", function()
      for _, path in ipairs({
        "/..%2f..%2fetc/passwd", "/../outside/passwd", "/%2e%2e/%2e%2e/etc/passwd",
        "/%2E%2E%2Fpasswd", "/docs/..%5c..%5cpasswd", "/a\\..\\b", "/x%00.css",
        "/link-out", "/dir-out/passwd", "/%zz", "/docs/%2e%2e/style.css",
      }) do
        local res = get(path)
        assert.are.equal(404, res.status, path)
        assert.is_nil(res.body:find("secret", 1, true), path)
      end
      assert.are.equal("body { color: red }\n", get("/link-in").body)   -- a symlink inside is fine
    end)

    it("does not load .lua files under public/ as routes", function()
      assert.are.equal("return 1\n", get("/q.lua").body)
      assert.are.equal(404, get("/q").status)
    end)
  end)
end
