-- The HTTP client (moonring.http, issue 9 item 5) over real sockets. Three
-- processes: the app under test, whose routes call upstreams and answer a
-- dump of what they got; a second moonring server as a well-behaved
-- upstream (echo, sleeps, a 1 MiB streamed body, redirects); and
-- spec/http_upstream.lua, a LuaSocket server answering hand-written bytes
-- (framings, broken responses, a lost keep-alive race), whose answers name
-- the connection that carried them ("conn=ID req=N").
local helper = require "helper"

---------------------------------------------------------------------------
-- The raw upstream process
---------------------------------------------------------------------------

local function start_raw()
  local dir = helper.tmpdir("rawup")
  local portfile = dir .. "/port"
  assert(os.execute(string.format(
    "{ lua5.4 spec/http_upstream.lua %s >%s 2>&1 </dev/null & echo $! >%s; }",
    helper.shell_quote(portfile), helper.shell_quote(dir .. "/log"), helper.shell_quote(dir .. "/pid"))))
  local port = helper.eventually(function()
    local s = helper.read_file(portfile)
    return s and tonumber(s:match("^(%d+)\n"))
  end, 5 * helper.slow)
  local pid = tonumber((helper.read_file(dir .. "/pid") or ""):match("%d+"))
  assert(port and pid, "spec/http_upstream.lua did not start: " .. tostring(helper.read_file(dir .. "/log")))
  return {
    port = port, pid = pid,
    log = function() return helper.read_file(dir .. "/log") or "" end,
    stop = function() os.execute("kill -KILL " .. pid .. " 2>/dev/null") end,
  }
end

-- The raw upstream's connection counts: accepted, open (this query's own
-- connection included in both).
local function raw_stats(raw)
  local body = helper.get(raw.port, "/stats").body
  local a, o = body:match("^accepted=(%d+) open=(%d+)$")
  return tonumber(a), tonumber(o)
end

-- "open" or "closed": the raw upstream's view of its connection `id`.
local function raw_open(raw, id)
  return helper.get(raw.port, "/isopen/" .. id).body
end

local function conn_of(body)
  return tonumber(tostring(body):match("conn=(%d+)"))
end

local function req_of(body)
  return tonumber(tostring(body):match("req=(%d+)"))
end

-- The 1 MiB body the moonring upstream streams, as the spec expects it.
local BIG = [[
local function big_chunk(i) return string.rep(string.format("%02d", i), 32768) end
]]
local function big_body()
  local f = assert(load(BIG .. "return big_chunk"))()
  local t = {}
  for i = 1, 16 do t[i] = f(i) end
  return table.concat(t)
end

---------------------------------------------------------------------------
-- The moonring upstream
---------------------------------------------------------------------------

local UPSTREAM = {
  ["hello.lua"] = [[return function(req) return { status = 200, body = "hello\n" } end]],
  ["sleep.lua"] = [[
local moonring = require "moonring"
return function(req)
  moonring.sleep(0.1)
  return { status = 200, body = "slept" }
end
]],
  ["echo.lua"] = helper.DUMP .. [[
return function(req)
  local body = req.body and req.body:read("a")
  return { status = 200, headers = { ["content-type"] = "text/x-dump", ["x-multi"] = { "1", "2" } },
    body = dump({ method = req.request_method, uri = req.uri, query = req.query_string,
                  headers = req.headers, body = body }) }
end
]],
  ["big.lua"] = BIG .. [[
return function(req)
  local i = 0
  return { status = 200, headers = { ["content-type"] = "application/octet-stream" },
    body = function()
      i = i + 1
      if i > 16 then return nil end
      return big_chunk(i)
    end }
end
]],
  -- ten chunks, 0.1 s apart
  ["drip.lua"] = [[
local moonring = require "moonring"
return function(req)
  local i = 0
  return { status = 200, body = function()
    i = i + 1
    if i > 10 then return nil end
    if i > 1 then moonring.sleep(0.1) end
    return "drop" .. i .. "\n"
  end }
end
]],
  ["r301.lua"] = [[return function(req) return { status = 301, headers = { location = "/echo?via=301" } } end]],
  ["r303.lua"] = [[return function(req) return { status = 303, headers = { location = "echo?via=303" }, body = "see other" } end]],
  ["r307.lua"] = [[return function(req) return { status = 307, headers = { location = "/echo?via=307" } } end]],
  ["r308abs.lua"] = [[
return function(req)
  return { status = 308, headers = { location = "http://localhost:" .. req.server_port .. "/echo?via=308" } }
end
]],
  ["rdots.lua"] = [[return function(req) return { status = 302, headers = { location = "./a/../echo?via=dots#frag" } } end]],
  ["rloop.lua"] = [[return function(req) return { status = 302, headers = { location = "/rloop" } } end]],
  ["rhttps.lua"] = [[return function(req) return { status = 302, headers = { location = "https://example.com/" } } end]],
  ["rnoloc.lua"] = [[return function(req) return { status = 302 } end]],
}

---------------------------------------------------------------------------
-- The app under test: a route per scenario, answering dump(result)
---------------------------------------------------------------------------

local function scenario(body)
  return "local moonring = require \"moonring\"\nlocal http = require \"moonring.http\"\n"
    .. "local U = require \"_up\"\n" .. helper.DUMP
    .. "local function scenario(req)\n" .. body .. "\nend\n" .. [[
return function(req)
  return { status = 200, body = dump(scenario(req)) }
end
]]
end

local APP = {
  ["hello.lua"] = [[return function(req) return { status = 200, body = "hello\n" } end]],

  ["roundtrip.lua"] = scenario [[
  local g, gerr = http.get(U.up .. "/echo?a=1&b=two", { headers = { ["X-Custom"] = "v1", ["X-Num"] = 42,
                                                                    ["X-Rep"] = { "r1", "r2" } } })
  local p, perr = http.post(U.up .. "/echo", "hello body", { headers = { ["content-type"] = "text/plain" } })
  local put = http.request{ method = "PUT", url = U.up .. "/echo", body = "" }
  local nobody = http.request{ method = "POST", url = U.up .. "/echo" }
  return { get = g and { status = g.status, ctype = g.headers["content-type"], multi = g.headers["x-multi"],
                         body = g.body }, gerr = gerr,
           post = p and { status = p.status, body = p.body }, perr = perr,
           put = put and put.body, nobody = nobody and nobody.body, same = moonring.http == http }
]],
  ["override.lua"] = scenario [[
  local r = http.get(U.up .. "/echo", { headers = { Host = "example.test", ["User-Agent"] = "spec/1",
                                                    ["Content-Length"] = "999" } })
  return { body = r and r.body }
]],

  ["framing.lua"] = scenario [[
  local out = {}
  for _, path in ipairs({ "/cl", "/chunked", "/trailers", "/close", "/http10", "/nocontent",
                          "/continue", "/early" }) do
    local r, err = http.get(U.raw .. path)
    out[path] = r and { status = r.status, body = r.body, headers = r.headers } or { err = err }
  end
  local h = http.request{ method = "HEAD", url = U.raw .. "/cl" }
  out.head = { status = h.status, body = h.body, length = h.headers["content-length"] }
  out.after_head = http.get(U.raw .. "/cl").body
  return out
]],

  ["reuse.lua"] = scenario [[
  local out = {}
  for i = 1, 3 do out[i] = http.get(U.raw .. "/cl").body end
  out.nocontent = http.get(U.raw .. "/nocontent").headers["x-tag"]
  out.after = http.get(U.raw .. "/cl").body
  return out
]],
  ["reuse_again.lua"] = scenario [[
  return { http.get(U.raw .. "/cl").body }
]],
  ["noreuse.lua"] = scenario [[
  local a = http.get(U.raw .. "/cl", { keepalive = false }).body
  local b = http.get(U.raw .. "/cl", { keepalive = false }).body
  local c = http.get(U.raw .. "/extra").body
  local d = http.get(U.raw .. "/cl").body
  local e = http.get(U.raw .. "/close").body
  local f = http.get(U.raw .. "/cl").body
  return { a = a, b = b, c = c, d = d, e = e, f = f }
]],
  ["pool.lua"] = scenario [[
  local tasks = {}
  for i = 1, 5 do
    tasks[i] = moonring.spawn(function() return http.get(U.raw .. "/slow", { pool_size = 2 }).body end)
  end
  local conns = {}
  for i = 1, 5 do conns[i] = tasks[i]:join() end
  return conns
]],
  ["client.lua"] = scenario [[
  local c = http.client{ url = U.raw .. "/", pool_size = 4, timeout = 5 }
  local out = {}
  for i = 1, 3 do out[i] = c:get("/cl").body end
  out.default = http.client{ url = U.raw .. "/cl" }:request().body   -- the base URL itself
  out.post = c:post("/cl", "x").body
  out.extra = c:get("/cl", { headers = { ["x-a"] = "1" } }).body
  local up = http.client{ url = U.up }
  local e = up:request{ method = "PUT", url = U.up .. "/echo", body = "put!" }
  out.put = e.body
  out.missing, out.missing_err = http.client{ url = "http://127.0.0.1:" .. U.free_port }:get("/x")
  out.stale_first = c:get("/once").body
  out.stale_second, out.stale_err = c:get("/cl")
  out.stale_second = out.stale_second and out.stale_second.body
  local ok, err = pcall(http.client, { url = "https://example.com" })
  out.https = err
  ok, err = pcall(http.client, { url = U.up, timeout = -1 })
  out.bad_timeout = err
  ok, err = pcall(c.get, c, "no-slash")
  out.bad_path = err
  return out
]],
  ["stale.lua"] = scenario [[
  local first = http.get(U.raw .. "/once").body
  local second, err = http.get(U.raw .. "/cl")
  local first_post = http.get(U.raw .. "/once").body
  local post, post_err = http.post(U.raw .. "/cl", "x")
  return { first = first, second = second and second.body, err = err,
           first_post = first_post, post = post and post.body, post_err = post_err }
]],

  ["parallel.lua"] = scenario [[
  local t0 = moonring.now()
  local tasks = {}
  for i = 1, 10 do
    tasks[i] = moonring.spawn(function()
      local r, err = http.get(U.up .. "/sleep")
      return r and r.body or err
    end)
  end
  local bodies = {}
  for i = 1, 10 do bodies[i] = tasks[i]:join() end
  return { bodies = bodies, elapsed = moonring.now() - t0 }
]],
  ["never.lua"] = scenario [[
  local t0 = moonring.now()
  local r, err = http.get(U.raw .. "/never", { timeout = 0.3 })
  return { res = r and r.status, err = err, elapsed = moonring.now() - t0 }
]],
  ["hang.lua"] = scenario [[
  return { http.get(U.raw .. "/never", { timeout = 20 }) }
]],
  ["readtimeout.lua"] = scenario [[
  local t0 = moonring.now()
  local r, err = http.get(U.raw .. "/never", { timeout = 10, read_timeout = 0.3 })
  return { res = r and r.status, err = err, elapsed = moonring.now() - t0 }
]],
  ["total.lua"] = scenario [[
  local t0 = moonring.now()
  local r, err = http.get(U.up .. "/drip", { timeout = 0.35, read_timeout = 5 })
  local elapsed = moonring.now() - t0
  local ok = http.get(U.up .. "/drip", { timeout = 5 })
  return { res = r and r.status, err = err, elapsed = elapsed, whole = ok and ok.body }
]],

  ["relay.lua"] = [[
local http = require "moonring.http"
local U = require "_up"
return function(req)
  local res, err = http.get(U.up .. "/big", { stream = true })
  if not res then return { status = 502, body = err } end
  return { status = res.status, headers = { ["content-type"] = res.headers["content-type"] }, body = res.body }
end
]],
  ["relaycut.lua"] = [[
local http = require "moonring.http"
local U = require "_up"
return function(req)
  local res = assert(http.get(U.raw .. "/cutchunked", { stream = true }))
  return { status = res.status, body = res.body }
end
]],
  ["stream.lua"] = scenario [[
  local out = {}
  local r = http.get(U.raw .. "/chunked", { stream = true })
  out.kind = type(r.body)
  local parts = {}
  for s in r.body do parts[#parts + 1] = s end
  out.parts = parts
  out.after_end = r.body()
  out.reused = http.get(U.raw .. "/chunked").body
  local c = http.get(U.raw .. "/cl", { stream = true })
  out.closed_conn = tonumber(c.headers["x-conn"])
  c:close()
  out.closed_then = c.body()
  out.after_close = http.get(U.raw .. "/cl").body
  local cut = http.get(U.raw .. "/cut", { stream = true })
  local pieces = {}
  out.cut_ok, out.cut_err = pcall(function() for s in cut.body do pieces[#pieces + 1] = s end end)
  out.cut_pieces = pieces
  out.cut_again = select(2, pcall(cut.body))
  out.unread_conn = tonumber(http.get(U.raw .. "/cl", { stream = true }).headers["x-conn"])
  return out
]],

  ["maxbody.lua"] = scenario [[
  local out = {}
  out.cl = { http.get(U.raw .. "/bigcl", { max_body = 1000 }) }
  out.chunked = { http.get(U.up .. "/big", { max_body = 100000 }) }
  out.fits = #http.get(U.up .. "/big", { max_body = 16 * 65536 }).body
  local s = http.get(U.up .. "/big", { stream = true, max_body = 100000 })
  local n = 0
  out.stream_ok, out.stream_err = pcall(function() for piece in s.body do n = n + #piece end end)
  out.stream_n = n
  out.bigcl = #http.get(U.raw .. "/bigcl").body
  return out
]],

  ["redirects.lua"] = scenario [[
  local function r(url, opts)
    local res, err = http.request(setmetatable({ url = U.up .. url }, { __index = opts }))
    if not res then return { err = err } end
    return { status = res.status, location = res.headers.location, body = res.body }
  end
  return {
    off = r("/r301", {}),
    moved = r("/r301", { redirects = 1 }),
    see_other = r("/r303", { method = "POST", body = "posted", redirects = 1 }),
    temporary = r("/r307", { method = "POST", body = "kept", redirects = 1 }),
    permanent = r("/r308abs", { method = "PUT", body = "put", redirects = 5,
                                headers = { authorization = "secret", ["x-keep"] = "k" } }),
    dots = r("/rdots", { redirects = 1 }),
    loop = r("/rloop", { redirects = 2 }),
    https = r("/rhttps", { redirects = 1 }),
    noloc = r("/rnoloc", { redirects = 1 }),
  }
]],

  ["errors.lua"] = scenario [[
  local function e(url, opts)
    local res, err = http.get(url, opts)
    return res and ("status " .. res.status) or err
  end
  return {
    https = e("https://127.0.0.1:" .. U.raw_port .. "/cl"),
    refused = e("http://127.0.0.1:" .. U.free_port .. "/"),
    bad = e(U.raw .. "/bad"),
    garbage = e(U.raw .. "/garbage"),
    cut = e(U.raw .. "/cut"),
    nohost = e("http:///path"),
    badport = e("http://127.0.0.1:99999/"),
    scheme = e("ftp://127.0.0.1/"),
    unknown = e("http://no-such-host.invalid/"),
    dns = e("http://localhost:" .. U.up_port .. "/hello"),
    dns_body = (http.get("http://localhost:" .. U.up_port .. "/hello") or {}).body,
    v6 = e("http://[::1]:" .. U.free_port .. "/"),
  }
]],
  ["misuse.lua"] = scenario [[
  local function m(f)
    local ok, err = pcall(f)
    return ok and "no error" or tostring(err)
  end
  local url = U.up .. "/echo"
  return {
    crlf = m(function() http.get(url, { headers = { ["X-Evil"] = "a\r\nInjected: 1" } }) end),
    nul = m(function() http.get(url, { headers = { ["X-Evil"] = "a\0b" } }) end),
    name = m(function() http.get(url, { headers = { ["Bad Name"] = "v" } }) end),
    value = m(function() http.get(url, { headers = { ["X-T"] = true } }) end),
    body = m(function() http.post(url, 42) end),
    url = m(function() http.get(42) end),
    userinfo = m(function() http.get("http://user:pw@127.0.0.1:" .. U.up_port .. "/echo") end),
    method = m(function() http.request{ url = url, method = "GE T" } end),
    timeout = m(function() http.get(url, { timeout = -1 }) end),
    opts = m(function() http.get(url, "nope") end),
    redirects = m(function() http.get(url, { redirects = 1.5 }) end),
  }
]],
}

---------------------------------------------------------------------------

local raw, up, app

setup(function()
  raw = start_raw()
  up = helper.start { app = helper.app(UPSTREAM) }
  local files = {
    ["_up.lua"] = string.format(
      "return { up = %q, raw = %q, up_port = %d, raw_port = %d, free_port = %d }\n",
      "http://127.0.0.1:" .. up.port, "http://127.0.0.1:" .. raw.port, up.port, raw.port, helper.free_port()),
  }
  for k, v in pairs(APP) do files[k] = v end
  app = helper.start { app = helper.app(files) }
end)

teardown(function()
  helper.close_connections()
  local ok1, e1 = pcall(function() if app then app:stop() end end)
  local ok2, e2 = pcall(function() if up then up:stop() end end)
  if raw then raw.stop() end
  assert(ok1, e1)
  assert(ok2, e2)
end)

-- GET path on the app under test: the dump its scenario answered.
local function run(path)
  local res = helper.get(app.port, path, { timeout = 10 * helper.slow })
  assert.are.equal(200, res.status, res.raw)
  return helper.undump(res.body)
end

describe("moonring.http", function()
  it("makes GET, POST, PUT round trips with headers and bodies", function()
    local r = run("/roundtrip")
    assert.is_nil(r.gerr)
    assert.are.equal(200, r.get.status)
    assert.are.equal("text/x-dump", r.get.ctype)
    assert.are.equal("1, 2", r.get.multi)
    local g = helper.undump(r.get.body)
    assert.are.equal("GET", g.method)
    assert.are.equal("/echo", g.uri)
    assert.are.equal("a=1&b=two", g.query)
    assert.are.equal("v1", g.headers["x-custom"])
    assert.are.equal("42", g.headers["x-num"])
    assert.are.equal("r1, r2", g.headers["x-rep"])
    assert.are.equal("127.0.0.1:" .. up.port, g.headers.host)
    assert.are.equal("moonring/", g.headers["user-agent"]:sub(1, 9))
    assert.are.equal("keep-alive", g.headers.connection)
    assert.is_nil(g.headers["content-length"])
    assert.is_nil(g.body)
    local p = helper.undump(r.post.body)
    assert.are.equal("POST", p.method)
    assert.are.equal("hello body", p.body)
    assert.are.equal("10", p.headers["content-length"])
    assert.are.equal("text/plain", p.headers["content-type"])
    local put = helper.undump(r.put)
    assert.are.equal("PUT", put.method)
    assert.are.equal("0", put.headers["content-length"])
    local nobody = helper.undump(r.nobody)
    assert.are.equal("0", nobody.headers["content-length"])
    assert.is_true(r.same)                 -- moonring.http is the same module
  end)

  it("lets the caller set Host and User-Agent, never Content-Length", function()
    local b = helper.undump(run("/override").body)
    assert.are.equal("example.test", b.headers.host)
    assert.are.equal("spec/1", b.headers["user-agent"])
    assert.is_nil(b.headers["content-length"])
  end)

  it("reads Content-Length, chunked and close-delimited bodies, 204, HEAD and 1xx responses", function()
    local r = run("/framing")
    assert.are.equal(200, r["/cl"].status)
    assert.matches("^conn=%d+ req=%d+$", r["/cl"].body)
    assert.are.equal("a, b", r["/cl"].headers["x-tag"])
    assert.matches("^hello chunked conn=%d+ req=%d+$", r["/chunked"].body)
    assert.matches("^conn=%d+ req=%d+ until close$", r["/close"].body)
    assert.matches("^conn=%d+ req=%d+ http/1.0$", r["/http10"].body)
    assert.are.equal(204, r["/nocontent"].status)
    assert.are.equal("", r["/nocontent"].body)
    assert.are.equal(200, r["/continue"].status)
    assert.matches("^conn=%d+ req=%d+$", r["/continue"].body)
    -- a 103 and the response in one read; a chunked body with its trailers in one read
    assert.are.equal(200, r["/early"].status)
    assert.matches("^conn=%d+ req=%d+$", r["/early"].body)
    assert.are.equal("a, b", r["/early"].headers["x-tag"])
    assert.matches("^hello conn=%d+ req=%d+$", r["/trailers"].body)
    assert.is_nil(r["/trailers"].headers["x-checksum"])
    assert.are.equal(200, r.head.status)
    assert.are.equal("", r.head.body)
    assert.is_truthy(tonumber(r.head.length))
    -- the HEAD response's connection was usable for the next request
    assert.matches("^conn=%d+ req=%d+$", r.after_head)
  end)

  it("keeps connections alive: the upstream sees one connection for many calls", function()
    local before = raw_stats(raw)
    local r = run("/reuse")
    local again = run("/reuse_again")
    local after = raw_stats(raw)
    local id = conn_of(r[1])
    assert.is_truthy(id)
    assert.are.equal(id, conn_of(r[2]))
    assert.are.equal(id, conn_of(r[3]))
    assert.are.equal(req_of(r[1]) + 1, req_of(r[2]))
    assert.are.equal(req_of(r[2]) + 1, req_of(r[3]))
    assert.are.equal(id, conn_of(r.nocontent))   -- a 204 leaves the connection reusable
    assert.are.equal(id, conn_of(r.after))
    assert.are.equal(id, conn_of(again[1]))     -- across requests of the same worker
    -- at most one new connection (if the pool was empty) besides /stats' own
    assert.is_true(after - before <= 2, "accepted " .. before .. " -> " .. after)
  end)

  it("does not reuse a connection when told not to, or when the response forbids it", function()
    local r = run("/noreuse")
    assert.are_not.equal(conn_of(r.a), conn_of(r.b))
    -- bytes after the response: the connection is not pooled
    assert.are_not.equal(conn_of(r.c), conn_of(r.d))
    -- Connection: close
    assert.are_not.equal(conn_of(r.e), conn_of(r.f))
  end)

  it("keeps at most pool_size idle connections per host:port", function()
    local r = run("/pool")
    local ids = {}
    for i = 1, 5 do ids[conn_of(r[i])] = true end
    local n = 0
    for _ in pairs(ids) do n = n + 1 end
    assert.are.equal(5, n)                          -- five connections at once
    -- two stay pooled (and /stats' own connection is open): the rest closed
    local open
    assert.is_truthy(helper.eventually(function()
      open = select(2, raw_stats(raw))
      return open == 3
    end), "open connections: " .. tostring(open))
  end)

  it("prepares a client for one upstream: pooled calls by path, options added per call", function()
    local before = raw_stats(raw)
    local r = run("/client")
    local after = raw_stats(raw)
    local id = conn_of(r[1])
    assert.is_truthy(id)
    assert.are.equal(id, conn_of(r[2]))              -- one connection, reused
    assert.are.equal(id, conn_of(r[3]))
    assert.are.equal(id, conn_of(r.default))
    assert.are.equal(id, conn_of(r.post))
    assert.are.equal(id, conn_of(r.extra))
    assert.truthy(r.put:find('["method"]="PUT"', 1, true), r.put)
    assert.truthy(r.put:find('["body"]="put!"', 1, true), r.put)
    assert.is_nil(r.missing)
    assert.are.equal("connection refused", r.missing_err)
    assert.is_truthy(conn_of(r.stale_first))         -- a pooled connection the upstream closed:
    assert.is_nil(r.stale_err)                       -- the GET goes again on another one
    assert.are_not.equal(conn_of(r.stale_first), conn_of(r.stale_second))
    assert.matches("https is not supported", r.https)
    assert.matches("timeout must be a number of seconds > 0", r.bad_timeout)
    assert.matches("path must be a string starting with /", r.bad_path)
    assert.is_true(after - before <= 3, "accepted " .. before .. " -> " .. after)
  end)

  it("retries an idempotent request once when a pooled connection turns out closed", function()
    local r = run("/stale")
    assert.is_nil(r.err)
    local lost = conn_of(r.first)
    assert.is_truthy(lost)
    assert.are_not.equal(lost, conn_of(r.second))   -- answered on another connection
    -- a POST is not repeated: its caller hears of the failure
    assert.is_nil(r.post)
    assert.are.equal("closed", r.post_err)
  end)

  it("runs 10 calls of 100 ms in parallel in about 100 ms, not 1 s", function()
    local t0 = helper.now()
    local r = run("/parallel")
    local elapsed = helper.now() - t0
    for i = 1, 10 do assert.are.equal("slept", r.bodies[i]) end
    assert.is_true(r.elapsed >= 0.09, "elapsed " .. r.elapsed)
    assert.is_true(r.elapsed < 0.6 * helper.slow, "elapsed " .. r.elapsed)
    assert.is_true(elapsed < 0.8 * helper.slow, "seen from the client: " .. elapsed)
  end)

  it("returns nil, \"timeout\" near the timeout for an upstream that never answers, serving others meanwhile", function()
    local conn = helper.connect(app.port, { timeout = 10 * helper.slow })
    local t0 = helper.now()
    assert(conn:send(helper.build_request(app.port, "GET", "/never")))
    helper.sleep(0.05)
    local hello = helper.get(app.port, "/hello")
    assert.are.equal("hello\n", hello.body)
    -- /hello was answered while /never still waited on its upstream
    conn.sock:settimeout(0)
    local early, why = conn.sock:receive(1)
    assert.is_nil(early)
    assert.are.equal("timeout", why)
    local res = conn:response()
    local r = helper.undump(res.body)
    assert.is_nil(r.res)
    assert.are.equal("timeout", r.err)
    assert.is_true(r.elapsed >= 0.25 and r.elapsed < 1.5, "elapsed " .. r.elapsed)
    assert.is_true(helper.now() - t0 < 1.5 * helper.slow)
    conn:close()
  end)

  it("closes the upstream connection when its client leaves mid-call", function()
    local conn = helper.connect(app.port)
    assert(conn:send(helper.build_request(app.port, "GET", "/hang")))
    helper.sleep(0.2 * helper.slow)                 -- the call waits on /never by now
    local _, during = raw_stats(raw)
    conn:close()
    local open
    assert.is_truthy(helper.eventually(function()
      open = select(2, raw_stats(raw))
      return open == during - 1
    end), "open connections: " .. tostring(during) .. " -> " .. tostring(open))
  end)

  it("bounds each read by read_timeout and the whole call by timeout", function()
    local r = run("/readtimeout")
    assert.are.equal("timeout", r.err)
    assert.is_true(r.elapsed >= 0.25 and r.elapsed < 1.5, "read_timeout: elapsed " .. r.elapsed)
    local t = run("/total")
    -- every read of /drip takes 0.1 s (< read_timeout), the whole body 0.9 s
    assert.are.equal("timeout", t.err)
    assert.is_nil(t.res)
    assert.matches("^drop1\n.*drop10\n$", t.whole)
    assert.is_true(t.elapsed >= 0.3 and t.elapsed < 0.8 * helper.slow, "elapsed " .. t.elapsed)
  end)

  it("streams a 1 MiB body that a handler relays as its own, intact", function()
    local res = helper.get(app.port, "/relay", { timeout = 10 * helper.slow })
    assert.are.equal(200, res.status)
    assert.are.equal("application/octet-stream", res.headers["content-type"])
    assert.are.equal("chunked", res.headers["transfer-encoding"])
    local want = big_body()
    assert.are.equal(#want, #res.body)
    assert.is_true(want == res.body, "relayed body differs")
  end)

  it("cuts the relayed response when the upstream body fails midway", function()
    local text, info = helper.raw(app.port, helper.build_request(app.port, "GET", "/relaycut"),
      { timeout = 5 * helper.slow })
    assert.is_true(info.closed)
    assert.matches("^HTTP/1.1 200", text)
    assert.is_true(#text > 65536)                      -- some of it went through
    assert.is_nil(text:find("\r\n0\r\n\r\n$"))         -- but never a clean end
    assert(app:wait_stderr("reading the body failed: closed before the end of the body"))
  end)

  it("gives a streamed body as an iterator: pooled at the end, closed by close() or an error", function()
    local r = run("/stream")
    assert.are.equal("function", r.kind)
    assert.are.equal("hello chunked ", table.concat(r.parts):sub(1, 14))
    assert.is_nil(r.after_end)
    -- read to the end: the same connection serves the next call
    assert.are.equal(conn_of(table.concat(r.parts)), conn_of(r.reused))
    -- close(): not pooled, and the iterator is over
    assert.is_nil(r.closed_then)
    assert.are_not.equal(r.closed_conn, conn_of(r.after_close))
    assert.is_truthy(helper.eventually(function() return raw_open(raw, r.closed_conn) == "closed" end))
    -- a body cut short raises from the iterator, again on the next call
    assert.is_false(r.cut_ok)
    assert.matches("closed before the end of the body", r.cut_err)
    assert.are.equal("0123456789", table.concat(r.cut_pieces))
    assert.matches("closed before the end of the body", r.cut_again)
    -- a body left unread: its connection is closed when the request ends
    assert.is_truthy(r.unread_conn)
    assert.is_truthy(helper.eventually(function() return raw_open(raw, r.unread_conn) == "closed" end))
  end)

  it("refuses bodies over max_body", function()
    local r = run("/maxbody")
    assert.is_nil(r.cl[1])
    assert.are.equal("body over max_body", r.cl[2])
    assert.is_nil(r.chunked[1])
    assert.are.equal("body over max_body", r.chunked[2])
    assert.are.equal(16 * 65536, r.fits)
    assert.is_false(r.stream_ok)
    assert.matches("body over max_body", r.stream_err)
    assert.is_true(r.stream_n <= 100000)
    assert.are.equal(1024 * 1024, r.bigcl)            -- the default allows 1 MiB
  end)

  it("follows redirects only when asked, up to the limit", function()
    local r = run("/redirects")
    assert.are.equal(301, r.off.status)
    assert.are.equal("/echo?via=301", r.off.location)
    local moved = helper.undump(r.moved.body)
    assert.are.equal("GET", moved.method)
    assert.are.equal("via=301", moved.query)
    local see = helper.undump(r.see_other.body)            -- 303: GET, no body
    assert.are.equal("GET", see.method)
    assert.are.equal("via=303", see.query)
    assert.is_nil(see.body)
    local temp = helper.undump(r.temporary.body)           -- 307: method and body kept
    assert.are.equal("POST", temp.method)
    assert.are.equal("kept", temp.body)
    local perm = helper.undump(r.permanent.body)           -- 308 to another host name
    assert.are.equal("PUT", perm.method)
    assert.are.equal("put", perm.body)
    assert.are.equal("localhost:" .. up.port, perm.headers.host)
    assert.is_nil(perm.headers.authorization)              -- credentials stay behind
    assert.are.equal("k", perm.headers["x-keep"])
    assert.are.equal("via=dots", helper.undump(r.dots.body).query)
    assert.are.equal("/echo", helper.undump(r.dots.body).uri)
    assert.are.equal("too many redirects (2 followed)", r.loop.err)
    assert.are.equal("https is not supported (plain HTTP only)", r.https.err)
    assert.matches("without a Location", r.noloc.err)
  end)

  it("returns nil, message for https, refused connections, bad responses and bad urls; resolves names", function()
    local r = run("/errors")
    assert.are.equal("https is not supported (plain HTTP only)", r.https)
    assert.are.equal("connection refused", r.refused)
    assert.matches("^bad response: ", r.bad)
    assert.matches("^bad response: ", r.garbage)
    assert.are.equal("closed before the end of the body", r.cut)
    assert.matches("^bad url", r.nohost)
    assert.matches("^bad url: port", r.badport)
    assert.matches("^bad url: scheme ftp", r.scheme)
    assert.matches("no%-such%-host%.invalid could not be resolved", r.unknown)
    assert.are.equal("status 200", r.dns)
    assert.are.equal("hello\n", r.dns_body)
    assert.are.equal("connection refused", r.v6)
  end)

  it("raises on misuse: header injection, bad names, wrong types, credentials in the url", function()
    local r = run("/misuse")
    assert.matches("CR, LF or NUL", r.crlf)
    assert.matches("CR, LF or NUL", r.nul)
    assert.matches("bad header name", r.name)
    assert.matches("header X%-T must be a string or number", r.value)
    assert.matches("body must be a string or nil", r.body)
    assert.matches("url must be a string", r.url)
    assert.matches("credentials in the url", r.userinfo)
    assert.matches("method must be a token", r.method)
    assert.matches("timeout must be a number of seconds > 0", r.timeout)
    assert.matches("expected an options table", r.opts)
    assert.matches("redirects must be an integer", r.redirects)
    -- errors point at the caller's line, not into moonring.http
    assert.matches("misuse.lua:%d+:", r.crlf)
    assert.matches("misuse.lua:%d+:", r.opts)
  end)
end)
