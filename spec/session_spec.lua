-- moonring.session over real sockets: the signed cookie store (changes saved,
-- unchanged sessions left alone, tampered/expired/foreign cookies → an empty
-- session), key rotation, destroy and replace, flash messages, the memory
-- store and the Redis store (against a redis-server this spec starts and
-- stops by pid). Every route exists twice, as a sync handler under sync/
-- and as an async one under async/ (it answers from a spawned task).
local helper = require "helper"

local NEW = "new-secret-0123456789abcdef"
local OLD = "old-secret-0123456789abcdef"
local OTHER = "other-secret-0123456789abcdef"
local SHAPES = { "sync", "async" }

-- The work of each route, shared by both shapes: work[name](req) → response.
local WORK = [==[
local W = {}
local function text(s, status)
  return { status = status or 200, headers = { ["content-type"] = "text/plain" }, body = tostring(s) }
end
function W.count(req)
  local s = req.session
  s.n = (s.n or 0) + 1
  return text(s.n)
end
function W.peek(req) return text(req.session.n or "none") end
function W.nested(req)
  local s = req.session
  s.cart = s.cart or { items = {} }
  s.cart.items[#s.cart.items + 1] = "x"
  return text(#s.cart.items)
end
function W.flash(req)
  req.flash("saved " .. (req.query_string or ""))
  return { status = 303, headers = { location = "/" }, body = "" }
end
function W.show(req)
  local m = req.flash_messages()
  return text(#m == 0 and "-" or table.concat(m, "|"))
end
function W.logout(req) req.session = nil return text("bye") end
function W.renew(req) req.session = { n = 100 } return text("renewed") end
function W.clear(req) req.session.n = nil return text("cleared") end
local SHARED = { status = 200, headers = { ["content-type"] = "text/plain", ["x-shared"] = "1" }, body = "shared" }
function W.shared(req)
  if req.query_string == "set" then req.session.n = 1 end
  return SHARED
end
function W.big(req) req.session.big = string.rep("x", 5000) return text("big") end
function W.bad(req) req.session.f = print return text("bad") end
function W.fail(req) req.session.n = 99 error("handler failed") end
return W
]==]

local function route(shape, name)
  if shape == "sync" then
    return 'local W = require "_lib.work"\nreturn function(req) return W.' .. name .. '(req) end\n'
  end
  return [[
local moonring = require "moonring"
local W = require "_lib.work"
return function(req, respond, raise)
  moonring.spawn(function()
    moonring.sleep(0.001)
    local ok, res = pcall(W.]] .. name .. [[, req)
    if ok then respond(res) else raise(res) end
  end)
end
]]
end

local ROUTES = { "count", "peek", "nested", "flash", "show", "logout", "renew", "clear", "shared", "big", "bad", "fail" }

-- Each configuration is a directory with its own _middleware.lua.
local CONFIGS = {
  c = ("{ secret = %q }"):format(NEW),
  old = ("{ secret = %q }"):format(OLD),
  rot = ("{ secret = { %q, %q } }"):format(NEW, OLD),
  other = ("{ secret = %q }"):format(OTHER),
  short = ("{ secret = %q, max_age = 1 }"):format(NEW),
  attrs = ("{ secret = %q, cookie = 'sid', path = '/attrs', max_age = 600, same_site = 'Strict', secure = true, http_only = false }"):format(NEW),
  mem = ("{ secret = %q, store = session.memory_store{ name = 'spec' } }"):format(NEW),
  redis = ("{ secret = %q, store = session.redis_store{ port = tonumber(os.getenv('REDIS_PORT')), prefix = 'spec:s:' } }"):format(NEW),
}

local function build_app()
  local files = {
    ["_lib/work.lua"] = WORK,
    ["index.lua"] = 'return function(req) return { status = 200, body = "ok" } end\n',
    ["crypto.lua"] = helper.DUMP .. [[
local core = require "moonring.core"
local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end
return function(req)
  local r = {}
  r.hmac = hex(core.hmac_sha256("Jefe", "what do ya want for nothing?"))
  r.hmac_long_key = hex(core.hmac_sha256(string.rep("\170", 131), "Test Using Larger Than Block-Size Key - Hash Key First"))
  r.random = #core.random_bytes(32)
  r.random_differs = core.random_bytes(16) ~= core.random_bytes(16)
  r.random_0 = select(2, pcall(core.random_bytes, 0))
  r.random_big = pcall(core.random_bytes, 4097)
  r.equal = { core.equal("abc", "abc"), core.equal("abc", "abd"), core.equal("abc", "ab"), core.equal("", "") }
  r.enc = {}
  for _, s in ipairs { "", "f", "fo", "foo", "foob", "fooba", "foobar", "\255\254\253\0" } do
    local e = core.b64url_encode(s)
    r.enc[#r.enc + 1] = e .. (core.b64url_decode(e) == s and "" or "!")
  end
  r.bad = {}
  for i, t in ipairs { "Zg=", "Zh", "a", "Z+8", "Zm9v YQ", "Zm9v\n" } do r.bad[i] = core.b64url_decode(t) == nil end
  return { status = 200, body = dump(r) }
end
]],
    ["memstore.lua"] = helper.DUMP .. [[
local session = require "moonring.session"
return function(req)
  local st = session.memory_store{ name = "unit", max = 2 }
  local r = {}
  st:save("a", { n = 1 }, 60)
  st:save("b", { n = 2 }, 60)
  st:save("a", { n = 11 }, 60)
  st:save("c", { n = 3 }, 60)          -- full: the oldest saved (b) goes
  r.count = st:count()
  r.a, r.b, r.c = st:load("a"), st:load("b"), st:load("c")
  st:save("d", { n = 4 }, -1)          -- expired at once
  r.d = st:load("d")
  st:delete("a")
  r.after_delete = { st:load("a"), st:count() }
  return { status = 200, body = dump(r) }
end
]],
    ["misuse.lua"] = [[
local session = require "moonring.session"
local function try(opts) local ok, err = pcall(session, opts) return ok and "ok" or err end
return function(req)
  return { status = 200, body = table.concat({
    try(nil), try{ secret = "short" }, try{ secret = {} }, try{ secret = string.rep("k", 16), max_age = -1 },
    try{ secret = string.rep("k", 16), same_site = "None" }, try{ secret = string.rep("k", 16), store = {} },
    try{ secret = string.rep("k", 16), cookie = "a b" }, try{ secret = string.rep("k", 16) },
  }, "\n") }
end
]],
  }
  for name, opts in pairs(CONFIGS) do
    files[name .. "/_middleware.lua"] = 'local session = require "moonring.session"\nreturn session' .. opts .. "\n"
    for _, shape in ipairs(SHAPES) do
      for _, r in ipairs(ROUTES) do
        files[name .. "/" .. shape .. "/" .. r .. ".lua"] = route(shape, r)
      end
    end
  end
  return files
end

-- The session cookie's "name=value" of a response (nil without one), and
-- the whole set-cookie line.
local function cookie_of(res, name)
  name = name or "moonring.session"
  for _, line in ipairs(helper.header_values(res, "set-cookie")) do
    local v = line:match("^" .. name:gsub("%p", "%%%0") .. "=([^;]*)")
    if v then return v, line end
  end
  return nil
end

local server, rds

local function get(path, cookie, name)
  local headers = {}
  if cookie then headers.Cookie = (name or "moonring.session") .. "=" .. cookie end
  return helper.get(server.port, path, { headers = headers })
end

lazy_setup(function()
  rds = helper.redis_start()
  server = helper.start { app = helper.app(build_app()), env = { REDIS_PORT = tostring(rds.port) } }
end)

lazy_teardown(function()
  if server then server:stop() end
  if rds then rds.stop() end
end)

describe("moonring.session construction", function()
  it("raises clear messages for bad options", function()
    local res = get("/misuse")
    assert.are.equal(200, res.status)
    local lines = {}
    for l in res.body:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.matches("expected an options table with a secret", lines[1])
    assert.matches("secret 1 must be a string of at least 16 bytes", lines[2])
    assert.matches("secret must be a string or a non%-empty array", lines[3])
    assert.matches("max_age must be a whole number", lines[4])
    assert.matches('same_site = "None" needs secure = true', lines[5])
    assert.matches("store has no load method", lines[6])
    assert.matches("cookie must be a cookie name", lines[7])
    assert.are.equal("ok", lines[8])
  end)
end)

describe("core crypto primitives (core/crypto.c)", function()
  it("computes HMAC-SHA256, random bytes, constant-time equality and base64url", function()
    local r = helper.undump(get("/crypto").body)
    -- RFC 4231, test cases 2 and 6
    assert.are.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", r.hmac)
    assert.are.equal("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54", r.hmac_long_key)
    assert.are.equal(32, r.random)
    assert.is_true(r.random_differs)
    assert.matches("expected a count from 1 to 4096", r.random_0)
    assert.is_false(r.random_big)
    assert.are.same({ true, false, false, true }, r.equal)
    assert.are.same({ "", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy", "__79AA" }, r.enc)
    assert.are.same({ true, true, true, true, true, true }, r.bad)
  end)
end)

describe("moonring.session.memory_store", function()
  it("expires, deletes, and evicts the oldest saved when full", function()
    local r = helper.undump(get("/memstore").body)
    assert.are.equal(2, r.count)
    assert.are.same({ n = 11 }, r.a)
    assert.is_nil(r.b)
    assert.are.same({ n = 3 }, r.c)
    assert.is_nil(r.d)
    assert.are.same({ [2] = 1 }, r.after_delete)
  end)
end)

for _, shape in ipairs(SHAPES) do
  local function p(config, r) return "/" .. config .. "/" .. shape .. "/" .. r end

  describe("moonring.session, signed cookie store (" .. shape .. ")", function()
    it("saves a changed session in a signed cookie and loads it back", function()
      local r1 = get(p("c", "count"))
      assert.are.equal(200, r1.status)
      assert.are.equal("1", r1.body)
      local c1, line = cookie_of(r1)
      assert.is_truthy(c1, "no session cookie in " .. r1.raw)
      assert.matches("^[%w_-]+%.%d+%.[%w_-]+$", c1)
      assert.matches("; Path=/", line, 1, true)
      assert.matches("; Max%-Age=1209600", line)
      assert.matches("; HttpOnly", line)
      assert.matches("; SameSite=Lax", line)
      assert.is_nil(line:find("Secure", 1, true))
      local r2 = get(p("c", "count"), c1)
      assert.are.equal("2", r2.body)
      local c2 = cookie_of(r2)
      assert.is_truthy(c2)
      assert.are.equal("2", get(p("c", "peek"), c2).body)
    end)

    it("does not set the cookie again when the session did not change", function()
      local c1 = cookie_of(get(p("c", "count")))
      local r = get(p("c", "peek"), c1)
      assert.are.equal("1", r.body)
      assert.is_nil(cookie_of(r), "unexpected set-cookie: " .. r.raw)
      local fresh = get(p("c", "peek"))
      assert.are.equal("none", fresh.body)
      assert.are.same({}, helper.header_values(fresh, "set-cookie"))
    end)

    it("notices changes deep inside the session", function()
      local c1 = cookie_of(get(p("c", "nested")))
      local r = get(p("c", "nested"), c1)
      assert.are.equal("2", r.body)
      assert.is_truthy(cookie_of(r))
    end)

    it("gives an empty session, not an error, for a tampered cookie", function()
      local c1 = cookie_of(get(p("c", "count")))
      assert.are.equal("2", get(p("c", "count"), c1).body)
      local payload, ts, mac = c1:match("^([^.]+)%.(%d+)%.(.+)$")
      local flip = function(s) return (s:sub(1, 1) == "A" and "B" or "A") .. s:sub(2) end
      -- {"n":1000} as the payload, with the original timestamp and MAC
      local forged = "eyJuIjoxMDAwfQ." .. ts .. "." .. mac
      for _, bad in ipairs {
        flip(payload) .. "." .. ts .. "." .. mac,
        payload .. "." .. (ts - 1) .. "." .. mac,
        payload .. "." .. ts .. "." .. flip(mac),
        payload .. "." .. ts .. "." .. mac:sub(1, -2),
        forged, "garbage", "", "...", payload, string.rep("A", 5000),
        payload .. "." .. ts .. "." .. mac .. "%00",
      } do
        local r = get(p("c", "count"), bad)
        assert.are.equal(200, r.status, "cookie " .. bad)
        assert.are.equal("1", r.body, "cookie " .. bad)
      end
      assert.are.equal("none", get(p("c", "peek"), forged).body)
    end)

    it("ignores a cookie signed with another secret (a foreign cookie)", function()
      local theirs = cookie_of(get(p("other", "count")))
      assert.are.equal("2", get(p("other", "count"), theirs).body)
      assert.are.equal("none", get(p("c", "peek"), theirs).body)
      assert.are.equal("1", get(p("c", "count"), theirs).body)
    end)

    it("ignores an expired cookie", function()
      local c1 = cookie_of(get(p("short", "count")))
      assert.are.equal("2", get(p("short", "count"), c1).body)
      helper.sleep(2.2)
      assert.are.equal("none", get(p("short", "peek"), c1).body)
    end)

    it("accepts the old secret after a rotation and signs again with the new one", function()
      local old = cookie_of(get(p("old", "count")))
      assert.are.equal("none", get(p("c", "peek"), old).body)      -- only NEW: refused
      local r = get(p("rot", "peek"), old)                            -- NEW, OLD: accepted
      assert.are.equal("1", r.body)
      local resigned = cookie_of(r)
      assert.is_truthy(resigned, "the rotated cookie was not signed again: " .. r.raw)
      assert.are.equal("1", get(p("c", "peek"), resigned).body)     -- valid under NEW alone
      assert.are.equal("none", get(p("old", "peek"), resigned).body)
      -- signed by the first secret already: nothing to do
      local r2 = get(p("rot", "count"), resigned)
      assert.are.equal("2", r2.body)
      assert.are.equal("2", get(p("c", "peek"), cookie_of(r2)).body)
    end)

    it("clears the cookie when req.session is set to nil", function()
      local c1 = cookie_of(get(p("c", "count")))
      local r = get(p("c", "logout"), c1)
      assert.are.equal("bye", r.body)
      local v, line = cookie_of(r)
      assert.are.equal("", v)
      assert.matches("Max%-Age=0", line)
      local none = get(p("c", "logout"))
      assert.are.same({}, helper.header_values(none, "set-cookie"))
    end)

    it("clears the cookie when the session becomes empty", function()
      local c1 = cookie_of(get(p("c", "count")))
      local v, line = cookie_of(get(p("c", "clear"), c1))
      assert.are.equal("", v)
      assert.matches("Max%-Age=0", line)
    end)

    it("saves a session replaced by a new table", function()
      local c1 = cookie_of(get(p("c", "count")))
      local c2 = cookie_of(get(p("c", "renew"), c1))
      assert.are.equal("100", get(p("c", "peek"), c2).body)
    end)

    it("shows a flash message once", function()
      local r = get(p("c", "flash") .. "?one")
      assert.are.equal(303, r.status)
      local c1 = cookie_of(r)
      assert.is_truthy(c1)
      local c2 = cookie_of(get(p("c", "flash") .. "?two", c1))
      local shown = get(p("c", "show"), c2)
      assert.are.equal("saved one|saved two", shown.body)
      local c3 = cookie_of(shown)
      assert.is_truthy(c3, "reading the messages must save the session")
      assert.are.equal("-", get(p("c", "show"), c3).body)
      assert.are.equal("-", get(p("c", "show")).body)
    end)

    it("writes the cookie attributes it is given", function()
      local r = get(p("attrs", "count"))
      local v, line = cookie_of(r, "sid")
      assert.is_truthy(v, r.raw)
      assert.matches("; Path=/attrs", line, 1, true)
      assert.matches("; Max-Age=600", line, 1, true)
      assert.matches("; Secure", line, 1, true)
      assert.matches("; SameSite=Strict", line, 1, true)
      assert.is_nil(line:find("HttpOnly", 1, true))
      assert.are.equal("2", get(p("attrs", "count"), v, "sid").body)
    end)

    it("never changes a response table the handler shares between requests", function()
      local r1 = get(p("c", "shared") .. "?set")
      assert.is_truthy(cookie_of(r1))
      local r2 = get(p("c", "shared"))
      assert.are.equal("shared", r2.body)
      assert.are.same({}, helper.header_values(r2, "set-cookie"))
    end)

    it("answers 500 for a session too big for a cookie or holding a function", function()
      assert.are.equal(500, get(p("c", "big")).status)
      assert.are.equal(500, get(p("c", "bad")).status)
      helper.assert_serves(server.port, "/")
    end)

    it("does not save when the handler fails", function()
      local c1 = cookie_of(get(p("c", "count")))
      local r = get(p("c", "fail"), c1)
      assert.are.equal(500, r.status)
      assert.are.same({}, helper.header_values(r, "set-cookie"))
    end)
  end)

  for _, kind in ipairs { "mem", "redis" } do
    describe("moonring.session, " .. kind .. " store (" .. shape .. ")", function()
      it("keeps the data on the server and a signed id in the cookie", function()
        local r1 = get(p(kind, "count"))
        assert.are.equal("1", r1.body)
        local c1 = cookie_of(r1)
        assert.matches("^[%w_-]+%.%d+%.[%w_-]+$", c1)
        local id = c1:match("^([^.]+)")
        assert.are.equal(43, #id)                          -- 32 random bytes, base64url
        local r2 = get(p(kind, "count"), c1)
        assert.are.equal("2", r2.body)
        local c2 = cookie_of(r2)
        assert.are.equal(id, c2:match("^([^.]+)"))         -- the same session
        assert.are.equal("2", get(p(kind, "peek"), c2).body)
        if kind == "redis" then
          assert.are.equal('{"n":2}', rds:cmd("GET", "spec:s:" .. id))
          local ttl = rds:cmd("TTL", "spec:s:" .. id)
          assert.is_true(ttl > 1209000 and ttl <= 1209600, "ttl " .. tostring(ttl))
        end
      end)

      it("gives an empty session for a tampered or unknown id", function()
        local c1 = cookie_of(get(p(kind, "count")))
        local id, ts, mac = c1:match("^([^.]+)%.(%d+)%.(.+)$")
        local other = (id:sub(1, 1) == "A" and "B" or "A") .. id:sub(2)
        assert.are.equal("none", get(p(kind, "peek"), other .. "." .. ts .. "." .. mac).body)
        assert.are.equal("none", get(p(kind, "peek"), "garbage").body)
        -- a signed cookie of the cookie store is no id
        local foreign = cookie_of(get(p("c", "count")))
        assert.are.equal("none", get(p(kind, "peek"), foreign).body)
      end)

      it("deletes the session on req.session = nil, so the old cookie is dead", function()
        local c1 = cookie_of(get(p(kind, "count")))
        local id = c1:match("^([^.]+)")
        local v = cookie_of(get(p(kind, "logout"), c1))
        assert.are.equal("", v)
        assert.are.equal("none", get(p(kind, "peek"), c1).body)
        if kind == "redis" then assert.is_nil(rds:cmd("GET", "spec:s:" .. id)) end
      end)

      it("gives a replaced session a new id and drops the old one", function()
        local c1 = cookie_of(get(p(kind, "count")))
        local c2 = cookie_of(get(p(kind, "renew"), c1))
        assert.are_not.equal(c1:match("^([^.]+)"), c2:match("^([^.]+)"))
        assert.are.equal("100", get(p(kind, "peek"), c2).body)
        assert.are.equal("none", get(p(kind, "peek"), c1).body)
      end)

      it("shows a flash message once", function()
        local c1 = cookie_of(get(p(kind, "flash") .. "?x"))
        local shown = get(p(kind, "show"), c1)
        assert.are.equal("saved x", shown.body)
        assert.are.equal("-", get(p(kind, "show"), cookie_of(shown) or c1).body)
      end)

      it("holds a session too big for a cookie", function()
        local r = get(p(kind, "big"))
        assert.are.equal(200, r.status)
        assert.is_true(#cookie_of(r) < 200)
      end)
    end)
  end
end
