-- moonring.csrf over real sockets, after moonring.session: a per-session
-- token in req.csrf_token; POST, PUT, PATCH and DELETE need it in the form
-- field or the header (else 403, and the handler never runs); safe methods
-- do not. Every route exists as a sync handler under sync/ and an async one
-- under async/ (of std/, and of custom/ with other names).
local helper = require "helper"

local SHAPES = { "sync", "async" }
local FORM = "application/x-www-form-urlencoded"

-- work[name](req) → response, shared by both shapes. state.runs counts the
-- handler calls, to show a refused request never reached one.
local WORK = [==[
local state = require "_lib.state"
local W = {}
local function text(s) return { status = 200, headers = { ["content-type"] = "text/plain" }, body = s } end
function W.form(req)
  state.runs = (state.runs or 0) + 1
  if req.request_method == "GET" then return text(req.csrf_token) end
  local note = req.form and req.form.note
  return text("posted " .. tostring(type(note) == "table" and table.concat(note, ",") or note))
end
function W.raw(req)
  state.runs = (state.runs or 0) + 1
  return text("body " .. (req.body and req.body:read("a") or "none"))
end
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

local function build_app()
  local files = {
    ["_lib/state.lua"] = "return {}\n",
    ["_lib/work.lua"] = WORK,
    ["state.lua"] = helper.STATE_ROUTE,
    ["index.lua"] = 'return function(req) return { status = 200, body = "ok" } end\n',
    ["misuse.lua"] = [[
local csrf = require "moonring.csrf"
local function try(opts) local ok, err = pcall(csrf, opts) return ok and "ok" or err end
return function(req)
  return { status = 200, body = table.concat({ try(5), try{ field = "" }, try{ header = "a b" }, try(nil) }, "\n") }
end
]],
    -- csrf without a session in front of it
    ["nosession/_middleware.lua"] = 'return require("moonring.csrf"){}\n',
    ["nosession/x.lua"] = 'return function(req) return { status = 200, body = "x" } end\n',
    ["custom/_middleware.lua"] = [[
local session = require("moonring.session"){ secret = "csrf-spec-secret-0123456789" }
local csrf = require("moonring.csrf"){ field = "tok", header = "X-Token" }
return function(h) return session(csrf(h)) end
]],
    ["std/_middleware.lua"] = [[
local moonring = require "moonring"
local session = moonring.session{ secret = "csrf-spec-secret-0123456789" }
local csrf = moonring.csrf{}
return function(h) return session(csrf(h)) end
]],
  }
  for _, shape in ipairs(SHAPES) do
    for _, r in ipairs { "form", "raw" } do
      files["std/" .. shape .. "/" .. r .. ".lua"] = route(shape, r)
      files["custom/" .. shape .. "/" .. r .. ".lua"] = route(shape, r)
    end
  end
  return files
end

local server

local function session_cookie(res)
  for _, line in ipairs(helper.header_values(res, "set-cookie")) do
    local v = line:match("^moonring%.session=([^;]*)")
    if v then return "moonring.session=" .. v end
  end
end

-- A fresh session: its cookie and its token.
local function login(path)
  local res = helper.get(server.port, path)
  assert.are.equal(200, res.status)
  local cookie = session_cookie(res)
  assert.is_truthy(cookie, "no session cookie: " .. res.raw)
  assert.matches("^[%w_-]+$", res.body)
  assert.are.equal(43, #res.body)
  return cookie, res.body
end

local function runs() return helper.state(server).runs or 0 end

local function post(path, cookie, body, headers, method)
  headers = headers or {}
  headers["Content-Type"] = headers["Content-Type"] or FORM
  if cookie then headers.Cookie = cookie end
  return helper.request(server.port, method or "POST", path, { headers = headers, body = body or "" })
end

lazy_setup(function()
  server = helper.start { app = helper.app(build_app()) }
end)

lazy_teardown(function()
  if server then server:stop() end
end)

describe("moonring.csrf construction", function()
  it("raises clear messages for bad options", function()
    local res = helper.get(server.port, "/misuse")
    local lines = {}
    for l in res.body:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.matches("expected an options table, got number", lines[1])
    assert.matches("field must be a non%-empty string", lines[2])
    assert.matches("header must be a header name", lines[3])
    assert.are.equal("ok", lines[4])
  end)

  it("answers 500 when no session runs before it", function()
    assert.are.equal(500, helper.get(server.port, "/nosession/x").status)
    assert.is_truthy(server:wait_stderr("put moonring.session{} before moonring.csrf{}"))
  end)
end)

for _, shape in ipairs(SHAPES) do
  local path = "/std/" .. shape .. "/form"

  describe("moonring.csrf (" .. shape .. ")", function()
    it("gives each session a token that stays the same", function()
      local cookie, token = login(path)
      local again = helper.get(server.port, path, { headers = { Cookie = cookie } })
      assert.are.equal(token, again.body)
      assert.is_nil(session_cookie(again))
      local _, other = login(path)
      assert.are_not.equal(token, other)
    end)

    it("answers 403 to a POST without a token, before the handler", function()
      local cookie = login(path)
      local before = runs()
      local res = post(path, cookie, "note=hi")
      assert.are.equal(403, res.status)
      assert.are.equal("Forbidden: missing CSRF token\n", res.body)
      assert.are.equal(before, runs())
      local fresh = post(path, nil, "note=hi")
      assert.are.equal(403, fresh.status)
    end)

    it("answers 200 to a POST with the token in the form field", function()
      local cookie, token = login(path)
      local res = post(path, cookie, "note=hello+there&_csrf=" .. token .. "&note=again")
      assert.are.equal(200, res.status, res.raw)
      assert.are.equal("posted hello there,again", res.body)
    end)

    it("answers 200 to a POST with the token in the header", function()
      local cookie, token = login(path)
      local res = post(path, cookie, '{"note":1}', { ["Content-Type"] = "application/json", ["X-CSRF-Token"] = token })
      assert.are.equal(200, res.status, res.raw)
    end)

    it("answers 403 to a wrong token, or another session's", function()
      local cookie, token = login(path)
      local _, theirs = login(path)
      for _, bad in ipairs { theirs, token:sub(1, -2), token .. "A", "", "x" } do
        local res = post(path, cookie, "_csrf=" .. bad)
        assert.are.equal(403, res.status, "token " .. bad)
        local h = post(path, cookie, "", { ["X-CSRF-Token"] = bad ~= "" and bad or "y" })
        assert.are.equal(403, h.status, "header " .. bad)
      end
      assert.are.equal("Forbidden: invalid CSRF token\n", post(path, cookie, "_csrf=" .. theirs).body)
      -- a token, but no session: the session's new token differs
      assert.are.equal(403, post(path, nil, "_csrf=" .. token).status)
      -- the token twice in the form: refused
      assert.are.equal(403, post(path, cookie, "_csrf=" .. token .. "&_csrf=" .. token).status)
    end)

    it("checks PUT, PATCH and DELETE but not GET, HEAD or OPTIONS", function()
      local cookie, token = login(path)
      for _, m in ipairs { "PUT", "PATCH", "DELETE" } do
        assert.are.equal(403, post(path, cookie, "", nil, m).status, m)
        assert.are.equal(200, post(path, cookie, "", { ["X-CSRF-Token"] = token }, m).status, m)
      end
      for _, m in ipairs { "GET", "HEAD", "OPTIONS" } do
        local res = helper.request(server.port, m, path, { headers = { Cookie = cookie } })
        assert.are.equal(200, res.status, m)
      end
    end)

    it("leaves the form body readable by the handler", function()
      local cookie, token = login(path)
      local res = post("/std/" .. shape .. "/raw", cookie, "a=1&_csrf=" .. token)
      assert.are.equal(200, res.status)
      assert.are.equal("body a=1&_csrf=" .. token, res.body)
    end)

    it("uses the field and header names it is given", function()
      local cpath = "/custom/" .. shape .. "/form"
      local cookie, token = login(cpath)
      assert.are.equal(403, post(cpath, cookie, "_csrf=" .. token).status)
      assert.are.equal(200, post(cpath, cookie, "tok=" .. token).status)
      assert.are.equal(200, post(cpath, cookie, "", { ["X-Token"] = token }).status)
    end)
  end)
end
