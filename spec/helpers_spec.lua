-- moonring's small helpers (issue 10, item 8) over real sockets, each rule
-- under a sync and an async handler: redirect, html and text; etag{} (304
-- on If-None-Match, W/, lists, *); security_headers{}; proxy_headers{}
-- (X-Forwarded-For/-Proto only from trusted peers); charset{}.
local helper = require "helper"

-- A route answering `R` (a Lua expression over req and moonring).
local function shaped(shape, R)
  local src = 'local moonring = require "moonring"\n'
  if shape == "sync" then return src .. "return function(req) return " .. R .. " end\n" end
  return src .. "return function(req, respond, raise)\n"
    .. "  moonring.spawn(function() respond(" .. R .. ") end)\nend\n"
end

local function method_table(shape, R)
  local src = 'local moonring = require "moonring"\n'
  if shape == "sync" then
    return src .. "return { GET = function(req) return " .. R .. " end, "
      .. "POST = function(req) return " .. R .. " end }\n"
  end
  local h = "function(req, respond, raise) moonring.spawn(function() respond(" .. R .. ") end) end"
  return src .. "return { GET = " .. h .. ", POST = " .. h .. " }\n"
end

local MIDDLEWARE = {
  etag = 'return require("moonring").etag{}',
  weak = 'return require("moonring").etag{ weak = true }',
  secure = 'return require("moonring").security_headers{}',
  hsts = [[
local moonring = require "moonring"
local proxy, sec = moonring.proxy_headers{}, moonring.security_headers{ hsts = true, frame_options = "DENY" }
return function(h) return proxy(sec(h)) end]],
  proxy = 'return require("moonring").proxy_headers{ trusted = { "127.0.0.1", "10.0.0.0/8" } }',
  untrusted = 'return require("moonring").proxy_headers{ trusted = { "10.9.9.9" } }',
  charset = 'return require("moonring.helpers").charset{}',
}

local ROUTES = {
  ["plain/redirect.lua"] = 'moonring.redirect("/there?x=1")',
  ["plain/moved.lua"] = 'moonring.redirect("https://example.com/", 301)',
  ["plain/html.lua"] = 'moonring.html("<p>hi</p>")',
  ["plain/text.lua"] = 'moonring.text("made", 201, { ["x-a"] = "b" })',
  ["etag/page.lua"] = 'moonring.text("hello etag\\n")',
  ["etag/own.lua"] = [[{ status = 200, headers = { etag = '"v1"' }, body = function() return nil end }]],
  ["etag/created.lua"] = 'moonring.text("new\\n", 201)',
  ["etag/stream.lua"] = [[{ status = 200, body = { "a", "b" } }]],
  ["etag/shared.lua"] = "SHARED",
  ["weak/page.lua"] = 'moonring.text("weak body\\n")',
  ["secure/page.lua"] = 'moonring.text("secure\\n")',
  ["secure/own.lua"] = [[{ status = 200, headers = { ["x-frame-options"] = "DENY", ["Referrer-Policy"] = "no-referrer" }, body = "own\n" }]],
  ["hsts/page.lua"] = 'moonring.text("hsts\\n")',
  ["proxy/who.lua"] = [[moonring.text(req.remote_addr .. " " .. req.scheme .. " " .. tostring(req.proxy_addr))]],
  ["untrusted/who.lua"] = [[moonring.text(req.remote_addr .. " " .. req.scheme .. " " .. tostring(req.proxy_addr))]],
  ["charset/html.lua"] = [[{ status = 200, headers = { ["content-type"] = "text/html" }, body = "x" }]],
  ["charset/latin.lua"] = [[{ status = 200, headers = { ["Content-Type"] = "text/plain; charset=iso-8859-1" }, body = "x" }]],
  ["charset/json.lua"] = [[{ status = 200, headers = { ["content-type"] = "application/json" }, body = "{}" }]],
}

local function app_files()
  local files = {
    ["misuse.lua"] = [[
local moonring = require "moonring"
local helpers = require "moonring.helpers"
return function(req)
  local out = {}
  local function try(f, ...)
    local ok, err = pcall(f, ...)
    out[#out + 1] = ok and "accepted" or err
  end
  try(moonring.etag, { weak = "yes" })
  try(moonring.security_headers, { frame_options = 5 })
  try(moonring.security_headers, { hsts = "bad\nvalue" })
  try(moonring.proxy_headers, { trusted = { "not an address" } })
  try(moonring.proxy_headers, { trusted = "127.0.0.1" })
  try(moonring.redirect, nil)
  try(moonring.redirect, "/x", 200)
  try(moonring.html, nil)
  try(moonring.text, "x", "200")
  try(helpers.charset, { charset = "utf 8" })
  return { status = 200, body = table.concat(out, "\n") }
end]],
  }
  for dir, src in pairs(MIDDLEWARE) do files[dir .. "/_middleware.lua"] = src end
  for _, shape in ipairs { "sync", "async" } do
    for path, R in pairs(ROUTES) do
      local dir, name = path:match("^(%w+)/(.*)$")
      local src = shaped(shape, R)
      if R == "SHARED" then
        src = 'local moonring = require "moonring"\nlocal SHARED = { status = 200, headers = '
          .. '{ ["content-type"] = "text/plain" }, body = "shared\\n" }\n'
          .. src:gsub('^local moonring = require "moonring"\n', "")
      end
      files[dir .. "/" .. shape .. "/" .. name] = src
    end
    files["etag/" .. shape .. "/both.lua"] = method_table(shape, 'moonring.text("both\\n")')
  end
  return files
end

describe("moonring helpers", function()
  local server

  lazy_setup(function()
    server = helper.start { app = helper.app(app_files()) }
  end)

  lazy_teardown(function()
    if server then server:stop() end
  end)

  local function get(path, headers, method)
    return helper.request(server.port, method or "GET", path, { headers = headers })
  end

  it("raise clear errors for wrong options and arguments", function()
    local res = get("/misuse")
    assert.are.equal(200, res.status)
    local lines = {}
    for l in res.body:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal(10, #lines, res.body)
    local want = {
      "etag: weak must be a boolean", "frame_options must be", "hsts must be",
      "trusted[1] is not an IP address", "trusted must be a list", "redirect: expected a URL",
      "redirect: status must be an integer 300-399", "html: expected a body",
      "text: status must be", "charset must be",
    }
    for i, w in ipairs(want) do assert.matches(w, lines[i], 1, true) end
  end)

  for _, shape in ipairs { "sync", "async" } do
    describe("under a " .. shape .. " handler", function()
      local function path(dir, name) return "/" .. dir .. "/" .. shape .. "/" .. name end

      it("redirect() answers 302 (or the status given) with Location", function()
        local res = get(path("plain", "redirect"))
        assert.are.equal(302, res.status)
        assert.are.equal("/there?x=1", res.headers["location"])
        assert.are.equal("", res.body)
        res = get(path("plain", "moved"))
        assert.are.equal(301, res.status)
        assert.are.equal("https://example.com/", res.headers["location"])
      end)

      it("html() and text() set the content type with charset=utf-8", function()
        local res = get(path("plain", "html"))
        assert.are.equal(200, res.status)
        assert.are.equal("text/html; charset=utf-8", res.headers["content-type"])
        assert.are.equal("<p>hi</p>", res.body)
        res = get(path("plain", "text"))
        assert.are.equal(201, res.status)
        assert.are.equal("text/plain; charset=utf-8", res.headers["content-type"])
        assert.are.equal("b", res.headers["x-a"])
        assert.are.equal("made", res.body)
      end)

      it("etag{} adds an ETag to a 200 string body and answers 304 when it matches", function()
        local res = get(path("etag", "page"))
        assert.are.equal(200, res.status)
        local tag = res.headers["etag"]
        assert.matches('^"%x+%-%x+"$', tag)
        assert.are.equal(tag, get(path("etag", "page")).headers["etag"])   -- stable
        local hit = get(path("etag", "page"), { ["If-None-Match"] = tag })
        assert.are.equal(304, hit.status)
        assert.are.equal("", hit.body)
        assert.are.equal(tag, hit.headers["etag"])
        assert.is_nil(hit.headers["content-length"])
        assert.are.equal(304, get(path("etag", "page"), { ["If-None-Match"] = "W/" .. tag }).status)
        assert.are.equal(304, get(path("etag", "page"), { ["If-None-Match"] = '"nope", ' .. tag }).status)
        assert.are.equal(304, get(path("etag", "page"), { ["If-None-Match"] = "*" }).status)
        assert.are.equal(304, get(path("etag", "page"), { ["If-None-Match"] = tag }, "HEAD").status)
        local miss = get(path("etag", "page"), { ["If-None-Match"] = '"other"' })
        assert.are.equal(200, miss.status)
        assert.are.equal("hello etag\n", miss.body)
      end)

      it("etag{} leaves other statuses, methods and non-string bodies alone; keeps a handler's ETag", function()
        local res = get(path("etag", "created"))
        assert.are.equal(201, res.status)
        assert.is_nil(res.headers["etag"])
        res = get(path("etag", "stream"))
        assert.are.equal("ab", res.body)
        assert.is_nil(res.headers["etag"])
        res = get(path("etag", "both"), nil, "POST")
        assert.are.equal(200, res.status)
        assert.is_nil(res.headers["etag"])
        res = get(path("etag", "both"), { ["If-None-Match"] = "*" }, "POST")
        assert.are.equal(200, res.status)
        assert.are.equal(304, get(path("etag", "both"), { ["If-None-Match"] = "*" }).status)
        res = get(path("etag", "own"))
        assert.are.equal('"v1"', res.headers["etag"])
        assert.are.equal(304, get(path("etag", "own"), { ["If-None-Match"] = 'W/"v1"' }).status)
      end)

      it("etag{} never changes the handler's own response table", function()
        local first = get(path("etag", "shared"))
        local tag = first.headers["etag"]
        assert.are.equal(304, get(path("etag", "shared"), { ["If-None-Match"] = tag }).status)
        local again = get(path("etag", "shared"))
        assert.are.equal(200, again.status)
        assert.are.equal("shared\n", again.body)
        assert.are.equal(tag, again.headers["etag"])
      end)

      it("etag{ weak = true } sends a weak ETag that still matches", function()
        local res = get(path("weak", "page"))
        local tag = res.headers["etag"]
        assert.matches('^W/"%x+%-%x+"$', tag)
        assert.are.equal(304, get(path("weak", "page"), { ["If-None-Match"] = tag }).status)
        assert.are.equal(304, get(path("weak", "page"), { ["If-None-Match"] = tag:sub(3) }).status)
      end)

      it("security_headers{} adds its headers unless the handler set them", function()
        local res = get(path("secure", "page"))
        assert.are.equal("SAMEORIGIN", res.headers["x-frame-options"])
        assert.are.equal("nosniff", res.headers["x-content-type-options"])
        assert.are.equal("strict-origin-when-cross-origin", res.headers["referrer-policy"])
        assert.is_nil(res.headers["strict-transport-security"])
        res = get(path("secure", "own"))
        assert.are.same({ "DENY" }, helper.header_values(res, "x-frame-options"))
        assert.are.same({ "no-referrer" }, helper.header_values(res, "referrer-policy"))
        assert.are.equal("nosniff", res.headers["x-content-type-options"])
      end)

      it("security_headers{ hsts = true } sends HSTS only on https", function()
        local res = get(path("hsts", "page"))
        assert.are.equal("DENY", res.headers["x-frame-options"])
        assert.is_nil(res.headers["strict-transport-security"])
        res = get(path("hsts", "page"), { ["X-Forwarded-Proto"] = "https" })
        assert.are.equal("max-age=31536000; includeSubDomains", res.headers["strict-transport-security"])
      end)

      it("proxy_headers{} takes remote_addr and scheme from a trusted peer's headers", function()
        local function who(headers) return get(path("proxy", "who"), headers).body end
        assert.are.equal("127.0.0.1 http nil", who())
        assert.are.equal("203.0.113.9 https 127.0.0.1",
          who { ["X-Forwarded-For"] = "203.0.113.9, 10.1.2.3", ["X-Forwarded-Proto"] = "https" })
        -- the right-most entry not a trusted proxy: a client cannot choose it
        assert.are.equal("203.0.113.9 http 127.0.0.1", who { ["X-Forwarded-For"] = "6.6.6.6, 203.0.113.9" })
        assert.are.equal("10.0.0.1 http 127.0.0.1", who { ["X-Forwarded-For"] = "10.0.0.1, 127.0.0.1" })
        assert.are.equal("2001:db8::1 http 127.0.0.1", who { ["X-Forwarded-For"] = "[2001:db8::1]:4711" })
        assert.are.equal("127.0.0.1 http nil", who { ["X-Forwarded-For"] = "not-an-ip" })
        assert.are.equal("127.0.0.1 http nil", who { ["X-Forwarded-Proto"] = "ftp" })
        assert.are.equal("127.0.0.1 https nil", who { ["X-Forwarded-Proto"] = "http, HTTPS" })
      end)

      it("proxy_headers{} ignores the headers of a peer that is not trusted", function()
        local res = get(path("untrusted", "who"),
          { ["X-Forwarded-For"] = "203.0.113.9", ["X-Forwarded-Proto"] = "https" })
        assert.are.equal("127.0.0.1 http nil", res.body)
      end)

      it("charset{} adds charset=utf-8 to text types that have none", function()
        assert.are.equal("text/html; charset=utf-8", get(path("charset", "html")).headers["content-type"])
        assert.are.equal("text/plain; charset=iso-8859-1", get(path("charset", "latin")).headers["content-type"])
        assert.are.equal("application/json", get(path("charset", "json")).headers["content-type"])
      end)
    end)
  end
end)
