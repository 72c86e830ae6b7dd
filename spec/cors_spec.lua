-- moonring.cors (issue 10, item 7) over real sockets, each rule under a sync
-- and an async handler: preflights answered 204 before the route (a method
-- table's 405 does not eat them), 403 for what is not allowed, allow headers
-- on allowed origins' responses, Vary: Origin appended, "*", credentials.
local helper = require "helper"

-- A method table { GET = h } answering `R` (a Lua expression), h of `shape`.
local function method_table(shape, R)
  local src = 'local moonring = require "moonring"\n'
  if shape == "sync" then
    return src .. "return { GET = function(req) return " .. R .. " end }\n"
  end
  return src .. "return { GET = function(req, respond, raise)\n"
    .. "  moonring.spawn(function() respond(" .. R .. ") end)\nend }\n"
end

-- A plain handler answering `R`.
local function plain(shape, R)
  local src = 'local moonring = require "moonring"\n'
  if shape == "sync" then return src .. "return function(req) return " .. R .. " end\n" end
  return src .. "return function(req, respond, raise)\n"
    .. "  moonring.spawn(function() respond(" .. R .. ") end)\nend\n"
end

local ITEMS = [[{ status = 200, headers = { vary = "Accept-Encoding", ["x-total"] = "3" }, body = "items\n" }]]
local PLAIN = [[{ status = 200, body = "plain\n" }]]

local function app_files()
  local files = {
    ["list/_middleware.lua"] = [[
return require("moonring").cors{ origins = { "https://a.example" }, expose = { "X-Total" }, max_age = 120 }]],
    ["star/_middleware.lua"] = [[return require("moonring").cors{ origins = "*" }]],
    ["fn/_middleware.lua"] = [[
return require("moonring").cors{
  origins = function(origin, req) return origin:match("^https://[%w.]+%.trusted%.example$") ~= nil end,
  credentials = true, headers = { "Content-Type", "X-Token" }, methods = { "GET", "PUT" },
}]],
    ["misuse.lua"] = [[
local moonring = require "moonring"
return function(req)
  local out = {}
  for _, opts in ipairs {
    "none", { origins = 5 }, { origins = { "https://a.example/" } },
    { origins = "*", methods = "GET" }, { origins = "*", max_age = -1 },
    { origins = "*", credentials = "yes" }, { origins = "*", headers = { "bad header" } },
  } do
    local ok, err = pcall(moonring.cors, opts ~= "none" and opts or nil)
    out[#out + 1] = ok and "accepted" or err
  end
  return { status = 200, body = table.concat(out, "\n") }
end]],
  }
  for _, shape in ipairs { "sync", "async" } do
    for _, dir in ipairs { "list", "star", "fn" } do
      files[dir .. "/" .. shape .. "/items.lua"] = method_table(shape, ITEMS)
      files[dir .. "/" .. shape .. "/plain.lua"] = plain(shape, PLAIN)
    end
  end
  return files
end

local function has_token(value, token)
  for t in (value or ""):gmatch("[^,%s]+") do
    if t:lower() == token:lower() then return true end
  end
  return false
end

describe("moonring.cors", function()
  local server

  lazy_setup(function()
    server = helper.start { app = helper.app(app_files()) }
  end)

  lazy_teardown(function()
    if server then server:stop() end
  end)

  local function preflight(path, origin, method, headers)
    local h = { Origin = origin, ["Access-Control-Request-Method"] = method }
    if headers then h["Access-Control-Request-Headers"] = headers end
    return helper.request(server.port, "OPTIONS", path, { headers = h })
  end

  local function get(path, origin)
    return helper.get(server.port, path, { headers = origin and { Origin = origin } or nil })
  end

  it("raises at construction for wrong options, naming the option", function()
    local res = get("/misuse")
    assert.are.equal(200, res.status)
    local lines = {}
    for l in res.body:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal(7, #lines, res.body)
    assert.matches("expected an options table", lines[1], 1, true)
    assert.matches("origins must be", lines[2], 1, true)
    assert.matches("origins[1]", lines[3], 1, true)
    assert.matches("methods must be a list", lines[4], 1, true)
    assert.matches("max_age must be", lines[5], 1, true)
    assert.matches("credentials must be a boolean", lines[6], 1, true)
    assert.matches("headers[1]", lines[7], 1, true)
  end)

  for _, shape in ipairs { "sync", "async" } do
    describe("under a " .. shape .. " handler", function()
      local list, star, fn = "/list/" .. shape, "/star/" .. shape, "/fn/" .. shape

      it("answers a preflight to a method-table route 204 with the allow headers", function()
        local res = preflight(list .. "/items", "https://a.example", "PUT", "Content-Type, X-Custom")
        assert.are.equal(204, res.status, res.raw)
        assert.are.equal("", res.body)
        assert.are.equal("https://a.example", res.headers["access-control-allow-origin"])
        assert.are.equal("GET, HEAD, POST, PUT, PATCH, DELETE", res.headers["access-control-allow-methods"])
        assert.are.equal("content-type, x-custom", res.headers["access-control-allow-headers"])
        assert.are.equal("120", res.headers["access-control-max-age"])
        assert.is_true(has_token(res.headers["vary"], "Origin"))
        assert.is_nil(res.headers["access-control-allow-credentials"])
      end)

      it("lets an OPTIONS that is not a preflight reach the route (its 405)", function()
        local res = helper.request(server.port, "OPTIONS", list .. "/items")
        assert.are.equal(405, res.status)
        assert.are.equal("GET, HEAD", res.headers["allow"])
        res = helper.request(server.port, "OPTIONS", list .. "/items",
          { headers = { Origin = "https://a.example" } })
        assert.are.equal(405, res.status)
        assert.are.equal("https://a.example", res.headers["access-control-allow-origin"])
      end)

      it("adds allow-origin, expose-headers and Vary: Origin to an allowed origin's response", function()
        local res = get(list .. "/items", "https://a.example")
        assert.are.equal(200, res.status)
        assert.are.equal("items\n", res.body)
        assert.are.equal("https://a.example", res.headers["access-control-allow-origin"])
        assert.are.equal("x-total", res.headers["access-control-expose-headers"])
        assert.are.equal("Accept-Encoding, Origin", res.headers["vary"])   -- appended
        res = get(list .. "/plain", "https://A.example")                    -- origins compare without case
        assert.are.equal("https://A.example", res.headers["access-control-allow-origin"])
        assert.are.equal("Origin", res.headers["vary"])
      end)

      it("passes a disallowed origin's request without CORS headers, with Vary: Origin", function()
        local res = get(list .. "/items", "https://evil.example")
        assert.are.equal(200, res.status)
        assert.are.equal("items\n", res.body)
        assert.is_nil(res.headers["access-control-allow-origin"])
        assert.is_nil(res.headers["access-control-expose-headers"])
        assert.is_true(has_token(res.headers["vary"], "Origin"))
        res = get(list .. "/plain")                                          -- no Origin at all
        assert.are.equal(200, res.status)
        assert.is_nil(res.headers["access-control-allow-origin"])
        assert.are.equal("Origin", res.headers["vary"])
      end)

      it("answers 403 to a preflight from a disallowed origin or for a method not allowed", function()
        local res = preflight(list .. "/items", "https://evil.example", "GET")
        assert.are.equal(403, res.status)
        assert.matches("origin not allowed", res.body, 1, true)
        assert.is_nil(res.headers["access-control-allow-origin"])
        res = preflight(list .. "/items", "https://a.example", "PROPFIND")
        assert.are.equal(403, res.status)
        assert.matches("method not allowed", res.body, 1, true)
      end)

      it('sends "*" for origins = "*" without credentials, and no Vary', function()
        local res = get(star .. "/items", "https://any.example")
        assert.are.equal(200, res.status)
        assert.are.equal("*", res.headers["access-control-allow-origin"])
        assert.are.equal("Accept-Encoding", res.headers["vary"])
        res = preflight(star .. "/items", "https://any.example", "DELETE")
        assert.are.equal(204, res.status)
        assert.are.equal("*", res.headers["access-control-allow-origin"])
        res = get(star .. "/plain")
        assert.is_nil(res.headers["access-control-allow-origin"])
        assert.is_nil(res.headers["vary"])
      end)

      it("asks an origins function, echoes the origin with credentials, checks listed headers", function()
        local o = "https://app.trusted.example"
        local res = preflight(fn .. "/items", o, "PUT", "x-token")
        assert.are.equal(204, res.status, res.raw)
        assert.are.equal(o, res.headers["access-control-allow-origin"])
        assert.are.equal("true", res.headers["access-control-allow-credentials"])
        assert.are.equal("GET, PUT", res.headers["access-control-allow-methods"])
        assert.are.equal("content-type, x-token", res.headers["access-control-allow-headers"])
        assert.are.equal("600", res.headers["access-control-max-age"])     -- the default
        res = preflight(fn .. "/items", o, "PUT", "X-Token, X-Other")
        assert.are.equal(403, res.status)
        assert.matches("header not allowed: x-other", res.body, 1, true)
        res = preflight(fn .. "/items", o, "DELETE")
        assert.are.equal(403, res.status)
        res = get(fn .. "/items", o)
        assert.are.equal(o, res.headers["access-control-allow-origin"])
        assert.are.equal("true", res.headers["access-control-allow-credentials"])
        res = get(fn .. "/items", "https://trusted.example.evil")
        assert.is_nil(res.headers["access-control-allow-origin"])
        assert.is_true(has_token(res.headers["vary"], "Origin"))
      end)
    end)
  end
end)
