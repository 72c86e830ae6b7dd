-- moonring.cookies (issue 10, item 4): req.cookies parsed from the cookie
-- header (bad pairs skipped, never an error), a response's `cookies` table
-- written as set-cookie lines beside the handler's own, invalid names and
-- values refused (a 500, logged). Every rule under a sync and an async
-- handler; cookies.parse and cookies.serialize as exported helpers.
local helper = require "helper"

local SHAPES = { "sync", "async" }

-- A route wrapped in moonring.cookies{}: `body` is the inside of
-- answer(req); the async shape answers from a spawned task.
local function route(shape, body)
  local head = "local moonring = require \"moonring\"\n" .. helper.DUMP
    .. "local function answer(req)\n" .. body .. "\nend\n"
    .. "return moonring.cookies{}(\n"
  if shape == "sync" then
    return head .. "function(req) return answer(req) end)\n"
  end
  return head .. [[
function(req, respond, raise)
  moonring.spawn(function()
    moonring.sleep(0.01)
    local ok, res = pcall(answer, req)
    if ok then respond(res) else raise(res) end
  end)
end)
]]
end

local ROUTES = {
  seen = [[ return { status = 200, body = dump(req.cookies) } ]],
  set = [[
  return {
    status = 200,
    headers = { ["set-cookie"] = "own=1; Path=/" },
    cookies = {
      theme = "dark",
      sid = { value = "abc123", path = "/app", domain = "example.com", max_age = 3600,
              expires = 0, secure = true, http_only = true, same_site = "Strict" },
      gone = { value = "", max_age = 0 },
      quoted = '"qv"',
      later = { value = "x", expires = "Wed, 21 Oct 2037 07:28:00 GMT", path = false },
    },
    body = "ok",
  }
]],
  none = [[ return { status = 200, body = "no cookies" } ]],
  badname = [[ return { status = 200, cookies = { ["bad name"] = "v" }, body = "x" } ]],
  badvalue = [[ return { status = 200, cookies = { ok = "has space-7c2" }, body = "x" } ]],
  badsamesite = [[ return { status = 200, cookies = { ok = { value = "v", same_site = "None" } }, body = "x" } ]],
}

local function app_files()
  local files = {}
  for _, shape in ipairs(SHAPES) do
    for name, body in pairs(ROUTES) do files[shape .. "/" .. name .. ".lua"] = route(shape, body) end
  end
  files["helpers.lua"] = helper.DUMP .. [[
local moonring = require "moonring"
return function(req)
  local c = moonring.cookies
  local ok, err = pcall(c.serialize, "n", "a;b")
  local ok2, err2 = pcall(c, { path = "/" })
  return { status = 200, body = dump({
    parsed = c.parse('x=1; y="2"'),
    line = c.serialize("n", { value = "v", max_age = 10, http_only = true, same_site = "lax" }),
    expires = c.serialize("e", { value = "v", expires = 86400 * 365 }),
    err = ok and "no error" or err,
    opt_err = ok2 and "no error" or err2,
  }) }
end
]]
  return files
end

local server
setup(function()
  server = helper.start { app = helper.app(app_files()) }
end)
teardown(function()
  if server then server:stop() end
end)

local function undump(res)
  assert.are.equal(200, res.status, res.raw)
  return helper.undump(res.body)
end

for _, shape in ipairs(SHAPES) do
  local base = "/" .. shape

  describe("moonring.cookies (" .. shape .. " handler)", function()
    it("parses the cookie header: quoted values unquoted, first repeat wins, bad pairs skipped", function()
      local res = helper.get(server.port, base .. "/seen", { headers = {
        Cookie = 'a=1; b="two words"; a=3; bad; c d=4; =5; e=; f=x=y;;  g = 7 ' } })
      assert.are.same({ a = "1", b = "two words", e = "", f = "x=y", g = "7" }, undump(res))
    end)

    it("gives an empty req.cookies without a cookie header, or with only junk in it", function()
      assert.are.same({}, undump(helper.get(server.port, base .. "/seen")))
      assert.are.same({}, undump(helper.get(server.port, base .. "/seen", { headers = { Cookie = ";;; junk ;" } })))
    end)

    it("writes the response's cookies as set-cookie lines after the handler's own", function()
      local res = helper.get(server.port, base .. "/set")
      assert.are.equal(200, res.status)
      local lines = helper.header_values(res, "set-cookie")
      assert.are.same({
        "own=1; Path=/",
        "gone=; Path=/; Max-Age=0",
        "later=x; Expires=Wed, 21 Oct 2037 07:28:00 GMT",
        'quoted="qv"; Path=/',
        "sid=abc123; Path=/app; Domain=example.com; Max-Age=3600; Expires=Thu, 01 Jan 1970 00:00:00 GMT;"
          .. " Secure; HttpOnly; SameSite=Strict",
        "theme=dark; Path=/",
      }, lines)
    end)

    it("adds no set-cookie line when the response has no cookies", function()
      local res = helper.get(server.port, base .. "/none")
      assert.are.equal(200, res.status)
      assert.are.same({}, helper.header_values(res, "set-cookie"))
    end)

    it("refuses an invalid name, value or attribute: 500 with the message logged", function()
      for _, case in ipairs {
        { "badname", 'cookie "bad name": the name must be a token' },
        { "badvalue", 'cookie "ok": the value must be a string of cookie-octets' },
        { "badsamesite", 'same_site = "None" needs secure = true' },
      } do
        local before = server:count_stderr(case[2])
        local res = helper.get(server.port, base .. "/" .. case[1])
        assert.are.equal(500, res.status, case[1])
        assert.are.same({}, helper.header_values(res, "set-cookie"))
        assert.is_truthy(server:wait_stderr_count(case[2], before + 1), "not logged: " .. case[2])
      end
      helper.assert_serves(server.port, base .. "/none")
    end)
  end)
end

describe("moonring.cookies helpers", function()
  it("exports parse and serialize, and refuses unknown options", function()
    local t = undump(helper.get(server.port, "/helpers"))
    assert.are.same({ x = "1", y = "2" }, t.parsed)
    assert.are.equal("n=v; Path=/; Max-Age=10; HttpOnly; SameSite=Lax", t.line)
    assert.are.equal("e=v; Path=/; Expires=Fri, 01 Jan 1971 00:00:00 GMT", t.expires)
    assert.matches("cookie%-octets", t.err)
    assert.matches("unknown option path", t.opt_err)
  end)
end)
