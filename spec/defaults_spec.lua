-- moonring.defaults.site{} and .api{} (docs/middleware.md, "Defaults
-- stacks"): one line in an app's top _middleware.lua gives a browser app
-- static files, params, cookies, a session, CSRF, security headers and
-- conditional GET, and an API params, JSON bodies and CORS — each checked
-- here through a route of each shape.
local helper = require "helper"

local SECRET = "a-secret-of-enough-bytes-for-the-spec"

local function route(shape, body)
  if shape == "sync" then
    return "local moonring = require \"moonring\"\nreturn function(req)\n" .. body .. "\nend\n"
  end
  return "local moonring = require \"moonring\"\nreturn function(req, respond, raise)\n"
    .. "  moonring.spawn(function() respond((function()\n" .. body .. "\nend)()) end)\nend\n"
end

-- The value of cookie `name` in a response's set-cookie lines.
local function cookie_of(res, name)
  for _, line in ipairs(helper.header_values(res, "set-cookie")) do
    local v = line:match("^" .. name:gsub("%p", "%%%0") .. "=([^;]*)")
    if v then return v end
  end
end

for _, shape in ipairs({ "sync", "async" }) do
  describe("defaults.site around a " .. shape .. " handler", function()
    local server

    lazy_setup(function()
      local app = helper.app({
        ["_middleware.lua"] = string.format([[return require("moonring").defaults.site{ secret = %q }]], SECRET),
        ["public/site.css"] = "body { margin: 0 }\n",
        ["page.lua"] = route(shape, [[
  req.session.visits = (req.session.visits or 0) + 1
  return moonring.html("<p>visits " .. req.session.visits .. " q=" .. tostring(req.query.q)
    .. " token=" .. req.csrf_token .. "</p>")]]),
        ["form.lua"] = route(shape, [[
  return moonring.text("posted " .. tostring(req.form.title) .. "\n")]]),
      })
      server = helper.start({ app = app })
    end)

    lazy_teardown(function() if server then server:stop() end end)

    it("serves public/ files with an ETag, and 304 on a match", function()
      local res = helper.get(server.port, "/site.css")
      assert.are.equal(200, res.status)
      assert.are.equal("body { margin: 0 }\n", res.body)
      assert.are.equal("text/css; charset=utf-8", res.headers["content-type"])
      assert.is_nil(cookie_of(res, "moonring.session"))   -- a file never touches the session
      res = helper.get(server.port, "/site.css", { headers = { ["If-None-Match"] = res.headers.etag } })
      assert.are.equal(304, res.status)
    end)

    it("gives routes params, a session kept in a cookie, security headers and conditional GET", function()
      local res = helper.get(server.port, "/page?q=a+b")
      assert.are.equal(200, res.status)
      assert.truthy(res.body:find("visits 1 q=a b", 1, true), res.body)
      assert.are.equal("nosniff", res.headers["x-content-type-options"])
      assert.are.equal("SAMEORIGIN", res.headers["x-frame-options"])
      assert.truthy(res.headers["referrer-policy"])
      assert.are.equal("text/html; charset=utf-8", res.headers["content-type"])
      assert.truthy(res.headers.etag)
      local sid = assert(cookie_of(res, "moonring.session"))
      res = helper.get(server.port, "/page?q=x", { headers = { Cookie = "moonring.session=" .. sid } })
      assert.truthy(res.body:find("visits 2", 1, true), res.body)
      -- a tampered session cookie: an empty session, never an error
      local bad = sid:sub(1, -2) .. (sid:sub(-1) == "A" and "B" or "A")
      res = helper.get(server.port, "/page", { headers = { Cookie = "moonring.session=" .. bad } })
      assert.are.equal(200, res.status)
      assert.truthy(res.body:find("visits 1", 1, true), res.body)
    end)

    it("answers 403 to a POST without the CSRF token, and takes one with it", function()
      local res = helper.request(server.port, "POST", "/form", {
        headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }, body = "title=hi" })
      assert.are.equal(403, res.status)
      local page = helper.get(server.port, "/page")
      local sid = cookie_of(page, "moonring.session")
      local token = page.body:match("token=([^<]+)<")
      res = helper.request(server.port, "POST", "/form", {
        headers = { ["Content-Type"] = "application/x-www-form-urlencoded",
                    Cookie = "moonring.session=" .. sid },
        body = "title=hi+there&_csrf=" .. token:gsub("[^%w%-_.~]", function(c)
          return string.format("%%%02X", c:byte()) end) })
      assert.are.equal(200, res.status, res.body)
      assert.are.equal("posted hi there\n", res.body)
    end)
  end)

  describe("defaults.api around a " .. shape .. " handler", function()
    local server

    lazy_setup(function()
      local app = helper.app({
        ["_middleware.lua"] = [[return require("moonring").defaults.api{ cors = { origins = { "http://app.test" } } }]],
        ["items.lua"] = "local moonring = require \"moonring\"\nreturn {\n"
          .. "  GET = " .. route(shape, [[return moonring.json({ q = req.query.q, items = moonring.array({}) })]]):gsub("^local moonring = require \"moonring\"\nreturn ", "") .. ",\n"
          .. "  POST = " .. route(shape, [[return moonring.json({ got = req.json }, 201)]]):gsub("^local moonring = require \"moonring\"\nreturn ", "") .. ",\n}\n",
      })
      server = helper.start({ app = app })
    end)

    lazy_teardown(function() if server then server:stop() end end)

    it("parses the query and answers JSON, an empty array as []", function()
      local res = helper.get(server.port, "/items?q=x+y")
      assert.are.equal(200, res.status)
      assert.are.equal("application/json", res.headers["content-type"])
      assert.truthy(res.body:find('"items":[]', 1, true), res.body)
      assert.truthy(res.body:find('"q":"x y"', 1, true), res.body)
      assert.are.equal("nosniff", res.headers["x-content-type-options"])
    end)

    it("decodes a JSON body, and answers 400 to a malformed one", function()
      local res = helper.request(server.port, "POST", "/items", {
        headers = { ["Content-Type"] = "application/json" }, body = '{"a":[1,2]}' })
      assert.are.equal(201, res.status)
      assert.are.equal('{"got":{"a":[1,2]}}', res.body)
      res = helper.request(server.port, "POST", "/items", {
        headers = { ["Content-Type"] = "application/json" }, body = '{"a":' })
      assert.are.equal(400, res.status)
    end)

    it("answers a CORS preflight to a method-table route with 204 and the allow headers", function()
      local res = helper.request(server.port, "OPTIONS", "/items", { headers = {
        Origin = "http://app.test", ["Access-Control-Request-Method"] = "POST",
        ["Access-Control-Request-Headers"] = "content-type" } })
      assert.are.equal(204, res.status)
      assert.are.equal("http://app.test", res.headers["access-control-allow-origin"])
      assert.truthy(res.headers["access-control-allow-methods"]:find("POST", 1, true))
      assert.truthy(res.headers.vary:find("Origin", 1, true))
    end)
  end)
end

describe("defaults misuse", function()
  it("refuses a site stack without a session secret, and unknown options, naming them", function()
    local app = helper.app({
      ["a.lua"] = [[
return function(req)
  local d = require("moonring").defaults
  local r = {}
  r[1] = select(2, pcall(d.site, {}))
  r[2] = select(2, pcall(d.site, { secret = "x", bogus = true }))
  r[3] = select(2, pcall(d.api, { cors = 5 }))
  r[4] = select(2, pcall(d.site, { session = false, csrf = {} }))
  return { status = 200, body = table.concat(r, "\n") }
end
]],
    })
    local server = helper.start({ app = app })
    local body = helper.get(server.port, "/a").body
    server:stop()
    assert.truthy(body:find("a session needs a secret", 1, true), body)
    assert.truthy(body:find("unknown option bogus", 1, true), body)
    assert.truthy(body:find("cors must be an options table or false", 1, true), body)
    assert.truthy(body:find("csrf needs the session", 1, true), body)
  end)
end)
