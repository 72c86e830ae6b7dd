-- File routes (DESIGN.md section 4.1, contract "Routing"): index, static,
-- [param], [...rest], precedence, method tables, 404/405, single-file apps,
-- and route files that fail to load.
local helper = require "helper"

-- Each route answers "<name> <dumped params> <route>".
local function route(name)
  return helper.DUMP .. string.format([[
return function(req)
  return { status = 200, body = %q .. " " .. dump(req.params) .. " " .. tostring(req.route) }
end
]], name)
end

local APP = {
  ["index.lua"] = route("index"),
  ["hello.lua"] = route("hello"),
  ["users/[id].lua"] = route("user"),
  ["users/me.lua"] = route("me"),
  ["users/[...rest].lua"] = route("users-rest"),
  ["files/[...rest].lua"] = route("files"),
  ["docs/index.lua"] = route("docs-index"),
  ["orgs/[org]/repos/[repo].lua"] = route("repo"),
  ["items.lua"] = [[
local function list(req) return { status = 200, body = "list" } end
local function create(req) return { status = 201, body = "created" } end
return { GET = list, POST = create }
]],
  ["routes.lua"] = helper.DUMP .. [[
local moonring = require "moonring"
return function(req) return { status = 200, body = dump(moonring.routes()) } end
]],
}

local function with_app(fn)
  return helper.with_server({ files = APP }, fn)
end

-- GET path, expect 200, return name, params, route.
local function hit(server, path, method)
  local res = helper.request(server.port, method or "GET", path)
  assert.are.equal(200, res.status, path .. " -> " .. res.raw)
  local name, params, rt = res.body:match("^(%S+) (%b{}) (.*)$")
  assert.is_truthy(name, "unexpected body: " .. res.body)
  return name, helper.undump(params), rt
end

describe("file routes", function()
  it("maps index.lua to /", function()
    with_app(function(server)
      local name, params, rt = hit(server, "/")
      assert.are.equal("index", name)
      assert.are.same({}, params)
      assert.are.equal("/", rt)
    end)
  end)

  it("maps a static file to its path", function()
    with_app(function(server)
      local name, _, rt = hit(server, "/hello")
      assert.are.equal("hello", name)
      assert.are.equal("/hello", rt)
    end)
  end)

  it("maps index.lua in a directory to the directory's path", function()
    with_app(function(server)
      assert.are.equal("docs-index", (hit(server, "/docs")))
    end)
  end)

  it("ignores empty path segments", function()
    with_app(function(server)
      assert.are.equal("hello", (hit(server, "/hello/")))
      assert.are.equal("hello", (hit(server, "//hello")))
    end)
  end)

  it("passes a [param] segment in req.params and names the route pattern", function()
    with_app(function(server)
      local name, params, rt = hit(server, "/users/42")
      assert.are.equal("user", name)
      assert.are.same({ id = "42" }, params)
      assert.are.equal("/users/:id", rt)
    end)
  end)

  it("percent-decodes params", function()
    with_app(function(server)
      local _, params = hit(server, "/users/a%20b%2Fc")
      assert.are.same({ id = "a b/c" }, params)
    end)
  end)

  it("fills several params from nested directories", function()
    with_app(function(server)
      local name, params = hit(server, "/orgs/lua/repos/moonring")
      assert.are.equal("repo", name)
      assert.are.same({ org = "lua", repo = "moonring" }, params)
    end)
  end)

  it("gives [...rest] the remaining segments joined with '/'", function()
    with_app(function(server)
      local name, params = hit(server, "/files/a/b")
      assert.are.equal("files", name)
      assert.are.same({ rest = "a/b" }, params)
      assert.are.same({ rest = "x" }, select(2, hit(server, "/files/x")))
    end)
  end)

  it("needs at least one segment for [...rest]", function()
    with_app(function(server)
      assert.are.equal(404, helper.get(server.port, "/files").status)
    end)
  end)

  it("prefers a static segment over a param", function()
    with_app(function(server)
      assert.are.equal("me", (hit(server, "/users/me")))
      assert.are.equal("user", (hit(server, "/users/42")))
    end)
  end)

  it("prefers a param over a rest route, which takes the deeper paths", function()
    with_app(function(server)
      assert.are.equal("user", (hit(server, "/users/7")))
      local name, params = hit(server, "/users/7/posts")
      assert.are.equal("users-rest", name)
      assert.are.same({ rest = "7/posts" }, params)
    end)
  end)

  it("answers 404 when no route matches", function()
    with_app(function(server)
      for _, path in ipairs { "/nope", "/hello/extra", "/docs/x/y" } do
        local res = helper.get(server.port, path)
        assert.are.equal(404, res.status, path)
      end
    end)
  end)

  it("dispatches on the method table of a route file", function()
    with_app(function(server)
      local get = helper.get(server.port, "/items")
      assert.are.equal(200, get.status)
      assert.are.equal("list", get.body)
      local post = helper.request(server.port, "POST", "/items", { body = "x" })
      assert.are.equal(201, post.status)
      assert.are.equal("created", post.body)
    end)
  end)

  it("answers 405 with Allow for a method the table lacks, HEAD allowed with GET", function()
    with_app(function(server)
      local res = helper.request(server.port, "DELETE", "/items")
      assert.are.equal(405, res.status)
      local allow = {}
      for m in (res.headers.allow or ""):gmatch("[%u]+") do allow[m] = true end
      assert.is_true(allow.GET, "Allow: " .. tostring(res.headers.allow))
      assert.is_true(allow.POST, "Allow: " .. tostring(res.headers.allow))
      assert.is_true(allow.HEAD, "Allow: " .. tostring(res.headers.allow))
      assert.is_nil(allow.DELETE)
      local head = helper.request(server.port, "HEAD", "/items")
      assert.are.equal(200, head.status)
      assert.are.equal("", head.body)
      assert.are.equal("4", head.headers["content-length"])
    end)
  end)

  it("lists the app's routes with moonring.routes()", function()
    with_app(function(server)
      local res = helper.get(server.port, "/routes")
      assert.are.equal(200, res.status)
      local by_path = {}
      for _, r in ipairs(helper.undump(res.body)) do by_path[r.path] = r end
      assert.are.equal("users/[id].lua", by_path["/users/:id"] and by_path["/users/:id"].file)
      assert.are.equal("hello.lua", by_path["/hello"] and by_path["/hello"].file)
      assert.are.equal("index.lua", by_path["/"] and by_path["/"].file)
      local rest
      for path, r in pairs(by_path) do
        if r.file == "files/[...rest].lua" then rest = path end
      end
      assert.matches("^/files/%*", rest or "(none)")
      local methods = by_path["/items"] and by_path["/items"].methods
      assert.is_truthy(methods, "no methods for /items")
      local set = {}
      for _, m in ipairs(methods) do set[m] = true end
      assert.is_true(set.GET and set.POST, "methods: " .. table.concat(methods, ","))
      assert.is_nil(set.DELETE)
      assert.is_nil(by_path["/hello"].methods)
    end)
  end)
end)

describe("single-file app", function()
  it("sends every path and method to the one handler", function()
    local files = { ["app.lua"] = [[return function(req)
  return { status = 200, body = req.request_method .. " " .. req.uri }
end]] }
    helper.with_server({ files = files, entry = "app.lua" }, function(server)
      assert.are.equal("GET /", helper.get(server.port, "/").body)
      assert.are.equal("GET /any/deep/path", helper.get(server.port, "/any/deep/path").body)
      assert.are.equal("PUT /x", helper.request(server.port, "PUT", "/x", { body = "y" }).body)
    end)
  end)
end)

describe("module search", function()
  it("never looks in the server's working directory (./?.lua, ./?.so)", function()
    local files = { ["paths.lua"] = [[return function(req)
  return { status = 200, body = package.path .. "\n" .. package.cpath }
end]], ["_lib/m.lua"] = "return { ok = true }", ["m.lua"] = [[local m = require "_lib.m"
return function(req) return { status = 200, body = tostring(m.ok) } end]] }
    helper.with_server({ files = files }, function(server)
      local body = helper.get(server.port, "/paths").body
      local path, cpath = body:match("^(.-)\n(.*)$")
      for entry in (path .. ";" .. cpath):gmatch("[^;]+") do
        assert.is_nil(entry:match("^%./"), "searches the working directory: " .. entry)
      end
      assert.is_truthy(path:find("?.lua", 1, true))
      assert.are.equal("true", helper.get(server.port, "/m").body)   -- app modules still found
    end)
  end)
end)

describe("route files that fail to load", function()
  local function run_app(files, entry)
    local dir = helper.app(files)
    local r = helper.run({ "--port", "0", entry and (dir .. "/" .. entry) or dir })
    helper.remove(dir)
    return r
  end

  it("make the server exit 1 naming the file and line of a syntax error", function()
    local r = run_app {
      ["good.lua"] = route("good"),
      ["bad.lua"] = "return function(req)\n  local x = \nend\n",
    }
    assert.are.equal(1, r.status, "stderr: " .. r.stderr)
    assert.matches("bad%.lua:%d+:", r.stderr)
    assert.is_nil(r.stdout:find("listening on", 1, true))
  end)

  it("make the server exit 1 for an error at the top level of a route file", function()
    local r = run_app { ["oops.lua"] = "local x = 1\nerror('top-level-failure')\n" }
    assert.are.equal(1, r.status, "stderr: " .. r.stderr)
    assert.matches("oops%.lua:2:", r.stderr)
    assert.matches("top%-level%-failure", r.stderr)
  end)

  it("refuse a handler declaring two parameters, naming the file", function()
    local r = run_app { ["two.lua"] = "return function(req, extra)\n  return { status = 200 }\nend\n" }
    assert.are.equal(1, r.status, "stderr: " .. r.stderr)
    assert.matches("two%.lua", r.stderr)
  end)

  it("refuse a route file that returns neither a function nor a method table", function()
    local r = run_app { ["num.lua"] = "return 42\n" }
    assert.are.equal(1, r.status, "stderr: " .. r.stderr)
    assert.matches("num%.lua", r.stderr)
  end)

  it("make the server exit 1 for a single-file APP with a syntax error", function()
    local r = run_app({ ["app.lua"] = "return function(req)\n  return {\nend\n" }, "app.lua")
    assert.are.equal(1, r.status, "stderr: " .. r.stderr)
    assert.matches("app%.lua:%d+:", r.stderr)
  end)
end)
