-- Unit specs for lua/moonring/router.lua: file names to URL patterns, and
-- request paths to routes (static > param > rest). No server involved.
local router = require "moonring.router"

local function build(files)
  local r = router.new()
  for _, f in ipairs(files) do r:add(f, { file = f }) end
  return r
end

local function match(r, path)
  local params = {}
  local e = r:match(path, params)
  return e and e.file, params
end

describe("router.parse", function()
  it("maps index.lua to /", function()
    local segs, pattern = router.parse("index.lua")
    assert.are.same({}, segs)
    assert.are.equal("/", pattern)
  end)

  it("maps a file name to its path without the extension", function()
    local segs, pattern = router.parse("hello.lua")
    assert.are.same({ "hello" }, segs)
    assert.are.equal("/hello", pattern)
  end)

  it("maps index.lua in a directory to the directory", function()
    assert.are.equal("/docs/guide", select(2, router.parse("docs/guide/index.lua")))
  end)

  it("turns [name] into a :name parameter segment", function()
    local segs, pattern = router.parse("users/[id].lua")
    assert.are.same({ "users", { param = "id" } }, segs)
    assert.are.equal("/users/:id", pattern)
  end)

  it("turns [...name] into a rest segment", function()
    local segs, pattern = router.parse("files/[...rest].lua")
    assert.are.same({ "files", { rest = "rest" } }, segs)
    assert.matches("^/files/%*", pattern)
  end)

  it("refuses a rest segment that is not last", function()
    local segs, err = router.parse("[...rest]/x.lua")
    assert.is_nil(segs)
    assert.is_string(err)
  end)

  it("refuses a malformed bracket segment", function()
    local segs, err = router.parse("users/[id.lua")
    assert.is_nil(segs)
    assert.is_string(err)
  end)
end)

describe("router:add", function()
  it("returns the entry with its pattern set", function()
    local r = router.new()
    local e = r:add("users/[id].lua", { file = "users/[id].lua" })
    assert.are.equal("/users/:id", e.pattern)
    assert.are.equal("users/[id].lua", e.file)
  end)

  it("keeps every added entry in r.list in order", function()
    local r = build { "index.lua", "users/[id].lua", "files/[...rest].lua" }
    local files = {}
    for i, e in ipairs(r.list) do files[i] = e.file end
    assert.are.same({ "index.lua", "users/[id].lua", "files/[...rest].lua" }, files)
  end)

  it("raises when two files map to the same pattern", function()
    local r = build { "a.lua" }
    assert.has_error(function() r:add("a/index.lua", { file = "a/index.lua" }) end)
  end)

  it("raises when two parameters of different names share a position", function()
    local r = build { "users/[id].lua" }
    assert.has_error(function() r:add("users/[name]/posts.lua", { file = "users/[name]/posts.lua" }) end)
  end)

  it("raises for a bad file name, naming it", function()
    local r = router.new()
    local ok, err = pcall(r.add, r, "x/[...a]/b.lua", { file = "x/[...a]/b.lua" })
    assert.is_false(ok)
    assert.matches("x/%[%.%.%.a%]/b%.lua", tostring(err))
  end)
end)

describe("router:match", function()
  local r = build {
    "index.lua", "hello.lua", "users/[id].lua", "users/me.lua", "users/[...rest].lua",
    "files/[...path].lua", "orgs/[org]/repos/[repo].lua", "docs/index.lua",
  }

  it("matches / to index.lua", function()
    assert.are.equal("index.lua", (match(r, "/")))
  end)

  it("matches a static path", function()
    assert.are.equal("hello.lua", (match(r, "/hello")))
    assert.are.equal("docs/index.lua", (match(r, "/docs")))
  end)

  it("ignores empty segments", function()
    assert.are.equal("hello.lua", (match(r, "/hello/")))
    assert.are.equal("hello.lua", (match(r, "//hello//")))
    assert.are.equal("index.lua", (match(r, "//")))
  end)

  it("fills params for a parameter segment", function()
    local file, params = match(r, "/users/42")
    assert.are.equal("users/[id].lua", file)
    assert.are.same({ id = "42" }, params)
  end)

  it("fills several params", function()
    local file, params = match(r, "/orgs/lua/repos/moonring")
    assert.are.equal("orgs/[org]/repos/[repo].lua", file)
    assert.are.same({ org = "lua", repo = "moonring" }, params)
  end)

  it("percent-decodes each segment after splitting the path", function()
    local file, params = match(r, "/users/a%20b%2Fc")
    assert.are.equal("users/[id].lua", file)
    assert.are.same({ id = "a b/c" }, params)
  end)

  it("prefers a static segment over a parameter", function()
    local file, params = match(r, "/users/me")
    assert.are.equal("users/me.lua", file)
    assert.are.same({}, params)
  end)

  it("prefers a parameter over a rest segment and gives rest the deeper paths", function()
    assert.are.equal("users/[id].lua", (match(r, "/users/7")))
    local file, params = match(r, "/users/7/posts/3")
    assert.are.equal("users/[...rest].lua", file)
    assert.are.same({ rest = "7/posts/3" }, params)
  end)

  it("needs at least one segment for a rest route", function()
    assert.is_nil((match(r, "/files")))
    local file, params = match(r, "/files/a/b")
    assert.are.equal("files/[...path].lua", file)
    assert.are.same({ path = "a/b" }, params)
  end)

  it("falls back from a static branch that dead-ends to a parameter", function()
    local r2 = build { "a/b/c.lua", "a/[x]/d.lua" }
    local file, params = match(r2, "/a/b/d")
    assert.are.equal("a/[x]/d.lua", file)
    assert.are.same({ x = "b" }, params)
  end)

  it("returns nil when nothing matches, leaving params empty", function()
    local file, params = match(r, "/nope/x")
    assert.is_nil(file)
    assert.are.same({}, params)
    assert.is_nil((match(r, "/hello/extra")))
  end)
end)
