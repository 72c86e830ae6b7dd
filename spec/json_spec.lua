-- moonring.json, moonring.array and moonring.json_body (issue 10, item 6),
-- over real sockets, each rule under a sync and an async handler: JSON
-- responses, empty arrays, req.json, 400 for malformed JSON, 415 for
-- another content type, 413 over max, no body → req.json = nil.
local helper = require "helper"

-- A route file whose `answer(req)` (defined by `body`) makes the response,
-- returned by a sync handler or delivered by an async one from a task.
local function shaped(shape, body)
  local src = 'local moonring = require "moonring"\nlocal json = require "moonring.json"\n'
    .. body .. "\n"
  if shape == "sync" then return src .. "return function(req) return answer(req) end\n" end
  return src .. "return function(req, respond, raise)\n"
    .. "  moonring.spawn(function() respond(answer(req)) end)\nend\n"
end

local ROUTES = {
  ["build.lua"] = [[
local function answer(req)
  return moonring.json({ items = moonring.array(), nested = { moonring.array {} }, n = 3,
                         big = 1234567890123456789, tenth = 0.1 }, 201, { ["x-extra"] = "yes" })
end]],
  ["plain.lua"] = [[
local function answer(req) return moonring.json({}) end]],
  -- echoes req.json, and what the handler saw of it
  ["echo.lua"] = [[
local function answer(req)
  local v = req.json
  if v == nil then return moonring.json({ none = true }) end
  return moonring.json({
    value = v,
    int = type(v) == "table" and math.type(v.n) or json.null,
    null = type(v) == "table" and v.x == json.null,
    empty_marked = type(v) == "table" and type(v.tags) == "table" and #v.tags == 0,
  })
end]],
  -- the body is still readable after json_body read it
  ["raw.lua"] = [[
local function answer(req)
  local s = req.body and req.body:read("a") or "<none>"
  return { status = 200, body = s }
end]],
  ["small/echo.lua"] = [[
local function answer(req) return moonring.json({ value = req.json }) end]],
}

local function app_files()
  local files = {
    ["misuse.lua"] = [[
local moonring = require "moonring"
return function(req)
  local out = {}
  for _, opts in ipairs({ { max = "big" }, { max = 0 }, "x", { strict = 1 } }) do
    local ok, err = pcall(moonring.json_body, opts)
    out[#out + 1] = ok and "accepted" or err
  end
  local ok, err = pcall(moonring.json, { f = print })
  out[#out + 1] = ok and "accepted" or err
  ok, err = pcall(moonring.json, {}, "200")
  out[#out + 1] = ok and "accepted" or err
  return { status = 200, body = table.concat(out, "\n") }
end]],
  }
  files["lenient/_middleware.lua"] = 'return require("moonring").json_body{ strict = false }'
  for _, shape in ipairs { "sync", "async" } do
    files[shape .. "/_middleware.lua"] = 'return require("moonring").json_body{}'
    files[shape .. "/small/_middleware.lua"] = 'return require("moonring").json_body{ max = 64 }'
    for name, body in pairs(ROUTES) do files[shape .. "/" .. name] = shaped(shape, body) end
    files["lenient/" .. shape .. "/raw.lua"] = shaped(shape, (ROUTES["raw.lua"]:gsub('"<none>"', 'tostring(req.json)')))
  end
  return files
end

local cjson = require "cjson"

describe("moonring.json", function()
  local server

  lazy_setup(function()
    server = helper.start { app = helper.app(app_files()) }
  end)

  lazy_teardown(function()
    if server then server:stop() end
  end)

  local function post(path, body, ctype, extra)
    local headers = { ["Content-Type"] = ctype or "application/json" }
    for k, v in pairs(extra or {}) do headers[k] = v end
    return helper.request(server.port, "POST", path, { headers = headers, body = body })
  end

  it("raises clear errors for wrong options and values that JSON cannot hold", function()
    local res = helper.get(server.port, "/misuse")
    assert.are.equal(200, res.status)
    local lines = {}
    for l in res.body:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.matches("json_body: max must be", lines[1], 1, true)
    assert.matches("json_body: max must be", lines[2], 1, true)
    assert.matches("json_body: expected an options table", lines[3], 1, true)
    assert.matches("strict must be a boolean", lines[4], 1, true)
    assert.matches("cannot encode", lines[5], 1, true)
    assert.matches("status must be an integer", lines[6], 1, true)
  end)

  for _, shape in ipairs { "sync", "async" } do
    local base = "/" .. shape

    describe("under a " .. shape .. " handler", function()
      it("json() answers with application/json, the status and headers given, and [] for array()", function()
        local res = helper.get(server.port, base .. "/build")
        assert.are.equal(201, res.status)
        assert.are.equal("application/json", res.headers["content-type"])
        assert.are.equal("yes", res.headers["x-extra"])
        assert.matches('"items":[]', res.body, 1, true)
        assert.matches('"nested":[[]]', res.body, 1, true)
        -- integers beyond cjson's 14 digits and floats are printed exactly
        assert.matches('"big":1234567890123456789', res.body, 1, true)
        assert.matches('"tenth":0.1', res.body, 1, true)
        assert.are.equal(3, cjson.decode(res.body).n)
      end)

      it("json() defaults to 200, and {} stays an object", function()
        local res = helper.get(server.port, base .. "/plain")
        assert.are.equal(200, res.status)
        assert.are.equal("application/json", res.headers["content-type"])
        assert.are.equal("{}", res.body)
      end)

      it("decodes a JSON body into req.json: integers, json.null and empty arrays kept", function()
        local res = post(base .. "/echo", '{"n": 7, "x": null, "tags": [ ], "s": "[]", "f": 1.5}')
        assert.are.equal(200, res.status, res.body)
        local got = cjson.decode(res.body)
        assert.are.equal("integer", got.int)
        assert.is_true(got.null)
        assert.is_true(got.empty_marked)
        assert.matches('"tags":[]', res.body, 1, true)   -- round-trips as an array
        assert.are.equal("[]", got.value.s)               -- a string "[]" stays a string
        assert.are.equal(1.5, got.value.f)
        assert.are.equal(7, got.value.n)
      end)

      it("accepts +json media types and charset=utf-8", function()
        local res = post(base .. "/echo", '{"n": 1}', "application/vnd.api+json")
        assert.are.equal(200, res.status, res.body)
        assert.are.equal(1, cjson.decode(res.body).value.n)
        res = post(base .. "/echo", '[1, 2]', "application/json; charset=UTF-8")
        assert.are.equal(200, res.status, res.body)
        assert.are.same({ 1, 2 }, cjson.decode(res.body).value)
      end)

      it("leaves req.json nil for a request without a body", function()
        local res = helper.get(server.port, base .. "/echo")
        assert.are.equal(200, res.status)
        assert.are.same({ none = true }, cjson.decode(res.body))
        res = post(base .. "/echo", "")                   -- Content-Length: 0
        assert.are.equal(200, res.status)
        assert.are.same({ none = true }, cjson.decode(res.body))
      end)

      it("answers 400 with a message for malformed JSON", function()
        for _, bad in ipairs { '{"a": 1', "{a: 1}", "NaN", "[1, 2] x", "0x10" } do
          local res = post(base .. "/echo", bad)
          assert.are.equal(400, res.status, bad)
          assert.matches("malformed JSON", res.body, 1, true)
          assert.matches("^text/plain", res.headers["content-type"])
        end
      end)

      it("answers 415 for a body of another content type, or none", function()
        local res = post(base .. "/echo", "a=1", "application/x-www-form-urlencoded")
        assert.are.equal(415, res.status)
        assert.matches("application/json", res.body, 1, true)
        res = post(base .. "/echo", '{"a":1}', "application/json; charset=latin1")
        assert.are.equal(415, res.status)
        res = helper.request(server.port, "POST", base .. "/echo", { body = '{"a":1}' })
        assert.are.equal(415, res.status)
      end)

      it("with strict = false, passes a body of another type on untouched", function()
        local res = post("/lenient/" .. shape .. "/raw", "a=1&b=2", "application/x-www-form-urlencoded")
        assert.are.equal(200, res.status)
        assert.are.equal("a=1&b=2", res.body)
        res = post("/lenient/" .. shape .. "/raw", "{oops", "application/json")
        assert.are.equal(400, res.status)
      end)

      it("answers 413 for a body over max, by Content-Length or as it arrives", function()
        local big = '{"s":"' .. string.rep("x", 100) .. '"}'
        local res = post(base .. "/small/echo", big)
        assert.are.equal(413, res.status)
        assert.matches("64 bytes", res.body, 1, true)
        res = post(base .. "/small/echo", helper.chunked { big:sub(1, 50), big:sub(51) },
          nil, { ["Transfer-Encoding"] = "chunked" })
        assert.are.equal(413, res.status)
        res = post(base .. "/small/echo", '{"s":"ok"}')     -- under max: through both layers
        assert.are.equal(200, res.status, res.body)
        assert.are.equal("ok", cjson.decode(res.body).value.s)
      end)

      it("leaves the body readable by the handler", function()
        local res = post(base .. "/raw", '{"k": [1, 2]}')
        assert.are.equal(200, res.status)
        assert.are.equal('{"k": [1, 2]}', res.body)
      end)
    end)
  end
end)
