-- moonring.template (issue 10, item 9) over real sockets: <%= %> escapes,
-- <%- %> is raw, <% %> runs Lua (loops), include() renders partials,
-- template.html answers text/html; syntax and runtime errors name the
-- template's file and line; a missing template is a clear error; templates
-- are cached until the app reloads (SIGHUP), and --dev sees an edit at once.
-- Every route exists twice: /sync/... (function(req)) and /async/...
-- (function(req, respond, raise), answering from a spawned task).
local helper = require "helper"

local SHAPES = { "sync", "async" }

-- A route answering the response `expr` evaluates to, in the given shape.
-- `caught(fn)` is in scope: fn's error message as a 200 text body.
local function route(shape, expr)
  local head = [[
local moonring = require "moonring"
local template = moonring.template
local function caught(fn)
  local ok, err = pcall(fn)
  if ok then return { status = 200, body = "no error: " .. tostring(err) } end
  return { status = 200, headers = { ["content-type"] = "text/plain" }, body = tostring(err) }
end
]]
  if shape == "sync" then
    return head .. "return function(req) return " .. expr .. " end\n"
  end
  return head .. [[
return function(req, respond, raise)
  moonring.spawn(function()
    moonring.sleep(0.001)
    local ok, res = pcall(function() return ]] .. expr .. [[ end)
    if ok then respond(res) else raise(res) end
  end)
end
]]
end

local TEMPLATES = {
  ["views/page.html"] = [[
<h1><%= title %></h1>
<div><%- note %></div>
<ul>
<% for i, item in ipairs(items) do -%>
<%- include("views/item.html", { i = i, item = item }) -%>
<% end -%>
</ul>
<p><%= #items %> items, <%% literal</p>
]],
  ["views/item.html"] = "<li><%= i %>. <%= item %></li>\n",
  -- line 3: `= =` is a syntax error
  ["views/syntax.html"] = "<p>one</p>\n<p>two</p>\n<% local x = = 1 %>\n",
  -- line 4: indexes a nil global
  ["views/runtime.html"] = "<p>\n<%= 'ok' %>\n</p>\n<%= user.name %>\n",
  -- an include whose partial fails on its line 2
  ["views/outer.html"] = "<div>\n<%- include('views/badpart.html') %>\n</div>\n",
  ["views/badpart.html"] = "<span>\n<% error('partial-failed-5e1') %>\n</span>\n",
  ["views/usesmissing.html"] = "<div>\n<%- include('views/nope.html') %>\n</div>\n",
  ["views/self.html"] = "<%- include('views/self.html') %>",
  ["views/version.html"] = "version <%= v %>",
}

local ROUTES = {
  page = [[template.html("views/page.html", {
    title = "<script>alert('x') & \"y\"</script>",
    note = "<i>raw</i>",
    items = { "<b>one</b>", "two & three" },
  })]],
  created = [[template.html("views/version.html", { v = 1 }, 201)]],
  syntax = [[caught(function() return template.render("views/syntax.html", {}) end)]],
  runtime = [[caught(function() return template.render("views/runtime.html", {}) end)]],
  uncaught = [[template.html("views/runtime.html", {})]],
  partial = [[caught(function() return template.render("views/outer.html", {}) end)]],
  missing = [[caught(function() return template.render("views/missing.html", {}) end)]],
  includemissing = [[caught(function() return template.render("views/usesmissing.html", {}) end)]],
  cycle = [[caught(function() return template.render("views/self.html", {}) end)]],
  badstatus = [[caught(function() return template.html("views/version.html", {}, "ok") end)]],
  badenv = [[caught(function() return template.render("views/version.html", 42) end)]],
  compiled = [[{ status = 200, body = template.compile(
    "<% for _, x in ipairs(xs) do -%>\n[<%= x %>]\n<% end -%>\nend", "inline")({ xs = { "<a>", 2 } }) }]],
  compilebad = [[caught(function() return template.compile("ok\n<%= %>", "inline.html") end)]],
  version = [[template.html("views/version.html", { v = 1 })]],
}

local function app_files()
  local files = {}
  for name, text in pairs(TEMPLATES) do files[name] = text end
  for _, shape in ipairs(SHAPES) do
    for name, expr in pairs(ROUTES) do
      files[shape .. "/" .. name .. ".lua"] = route(shape, expr)
    end
  end
  return files
end

local function get(server, path)
  return helper.get(server.port, path)
end

describe("moonring.template", function()
  local server
  lazy_setup(function()
    server = helper.start({ app = helper.app(app_files()) })
  end)
  lazy_teardown(function()
    if server then server:stop() end
  end)

  for _, shape in ipairs(SHAPES) do
    local base = "/" .. shape .. "/"

    describe("under a " .. shape .. " handler", function()
      it("escapes <script> in <%= %> and answers text/html; charset=utf-8", function()
        local res = get(server, base .. "page")
        assert.are.equal(200, res.status, res.body)
        assert.are.equal("text/html; charset=utf-8", res.headers["content-type"])
        assert.is_nil(res.body:find("<script>", 1, true), res.body)
        assert.is_truthy(res.body:find(
          "<h1>&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;</h1>", 1, true), res.body)
      end)

      it("writes <%- %> raw", function()
        local res = get(server, base .. "page")
        assert.is_truthy(res.body:find("<div><i>raw</i></div>", 1, true), res.body)
      end)

      it("runs <% %> loops, with include() partials and -%> trimming", function()
        local res = get(server, base .. "page")
        assert.is_truthy(res.body:find(
          "<ul>\n<li>1. &lt;b&gt;one&lt;/b&gt;</li>\n<li>2. two &amp; three</li>\n</ul>\n", 1, true), res.body)
        assert.is_truthy(res.body:find("<p>2 items, <% literal</p>", 1, true), res.body)
      end)

      it("answers the status given to template.html", function()
        local res = get(server, base .. "created")
        assert.are.equal(201, res.status)
        assert.are.equal("version 1", res.body)
      end)

      it("compiles a string template", function()
        local res = get(server, base .. "compiled")
        assert.are.equal("[&lt;a&gt;]\n[2]\nend", res.body)
      end)

      it("names the template's file and line in a syntax error", function()
        local res = get(server, base .. "syntax")
        assert.matches("^views/syntax%.html:3: ", res.body)
        res = get(server, base .. "compilebad")
        assert.matches("^inline%.html:2: ", res.body)
      end)

      it("names the template's file and line in a runtime error", function()
        local res = get(server, base .. "runtime")
        assert.matches("^views/runtime%.html:4: attempt to index a nil value %(global 'user'%)", res.body)
      end)

      it("names the partial's file and line for an error inside an include", function()
        local res = get(server, base .. "partial")
        assert.matches("^views/badpart%.html:2: partial%-failed%-5e1", res.body)
      end)

      it("answers 500 and logs file:line when the error is not caught", function()
        local res = get(server, base .. "uncaught")
        assert.are.equal(500, res.status)
        assert.is_truthy(server:wait_stderr("GET " .. base .. "uncaught[^\n]*views/runtime%.html:4: "),
          "no file:line logged:\n" .. server:stderr_text())
      end)

      it("says clearly which template is missing", function()
        local res = get(server, base .. "missing")
        assert.matches("^moonring%.template: cannot read template 'views/missing%.html': ", res.body)
        assert.is_truthy(res.body:find("No such file", 1, true), res.body)
        -- from include(): at the including template's line
        res = get(server, base .. "includemissing")
        assert.matches("^views/usesmissing%.html:2: moonring%.template: cannot read template 'views/nope%.html'", res.body)
      end)

      it("stops an include cycle with a clear error", function()
        local res = get(server, base .. "cycle")
        assert.matches("views/self%.html:1: moonring%.template: include nested more than %d+ deep", res.body)
      end)

      it("raises on misuse: a bad status, an env that is not a table", function()
        assert.matches("status must be an integer", get(server, base .. "badstatus").body)
        assert.matches("env must be a table, got number", get(server, base .. "badenv").body)
      end)
    end)
  end
end)

describe("moonring.template and reloads", function()
  local server, app
  lazy_setup(function()
    app = helper.app(app_files())
    server = helper.start({ app = app })
  end)
  lazy_teardown(function()
    if server then server:stop() end
  end)

  it("keeps a compiled template until the app reloads, then reads the edit", function()
    for _, shape in ipairs(SHAPES) do
      assert.are.equal("version 1", get(server, "/" .. shape .. "/version").body)
    end
    helper.replace_file(app .. "/views/version.html", "version two: <%= v + 1 %>")
    for _, shape in ipairs(SHAPES) do
      assert.are.equal("version 1", get(server, "/" .. shape .. "/version").body,
        "the cached template was not used")
    end
    local before = server:count_stderr("] reloaded ")
    assert.is_true(server:signal("HUP"))
    assert.is_truthy(server:wait_stderr_count("] reloaded ", before + 1, 3 * helper.slow), server:stderr_text())
    for _, shape in ipairs(SHAPES) do
      assert.are.equal("version two: 2", get(server, "/" .. shape .. "/version").body)
    end
  end)
end)

describe("moonring.template with --dev", function()
  local server, app
  lazy_setup(function()
    app = helper.app(app_files())
    server = helper.start({ app = app, args = { "--dev" } })
  end)
  lazy_teardown(function()
    if server then server:stop() end
  end)

  it("reads a template edited on disk at the next request, errors included", function()
    for _, shape in ipairs(SHAPES) do
      assert.are.equal("version 1", get(server, "/" .. shape .. "/version").body)
    end
    helper.write_file(app .. "/views/version.html", "edited <%= v %>")
    for _, shape in ipairs(SHAPES) do
      assert.are.equal("edited 1", get(server, "/" .. shape .. "/version").body)
    end
    helper.write_file(app .. "/views/version.html", "line one\n<%= v .. %>\n")
    for _, shape in ipairs(SHAPES) do
      local res = get(server, "/" .. shape .. "/version")
      assert.are.equal(500, res.status)
      assert.is_truthy(res.body:find("views/version.html:2: ", 1, true), res.body)
    end
  end)
end)
