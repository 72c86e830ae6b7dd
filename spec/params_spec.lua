-- moonring.params (issue 10, item 3): req.query and req.form decoded, 400 on
-- bad percent-encoding, multipart/form-data streamed with file parts in
-- temporary files that are gone once the request ends (answered, raised,
-- client gone), and the limits (413). Every rule under a sync and an async
-- handler. Also moonring.parse_query and the default app's /slow?class=2.
local helper = require "helper"

local SHAPES = { "sync", "async" }
local BOUNDARY = "----moonringSpecB0undary7Q"

-- A route wrapped in moonring.params{ <opts> }: `body` is the inside of
-- answer(req), which returns the response; the async shape answers from a
-- spawned task.
local function route(shape, opts, body)
  local head = "local moonring = require \"moonring\"\n" .. helper.DUMP
    .. "local function answer(req)\n" .. body .. "\nend\n"
    .. "return moonring.params(" .. opts .. ")(\n"
  if shape == "sync" then
    return head .. "function(req) return answer(req) end)\n"
  end
  return head .. [[
function(req, respond, raise)
  moonring.spawn(function()
    local ok, res = pcall(answer, req)
    if ok then respond(res) else raise(res) end
  end)
end)
]]
end

-- What the handler saw, as a dump: query, form, files, path params.
local SEEN = [[
  return { status = 200, body = dump({ query = req.query, form = req.form, files = req.files,
    params = req.params, called = true }) }
]]

-- Reads every uploaded file back: { name = { size=, content=, path=, filename=, content_type= } }
local FILES = [[
  local out = {}
  for name, f in pairs(req.files) do
    local list = f[1] and f or { f }
    out[name] = {}
    for i, one in ipairs(list) do
      local h = assert(io.open(one.path, "rb"))
      local data = h:read("a")
      h:close()
      out[name][i] = { size = one.size, content = data, path = one.path,
        filename = one.filename, content_type = one.content_type }
    end
  end
  return { status = 200, body = dump({ form = req.form, files = out }) }
]]

-- 5 MB whose every byte is known: a 251-byte unit (so it never lines up with
-- reads) holding CR LF, dashes and the start of the boundary.
local UNIT = ("\r\n--" .. BOUNDARY:sub(1, 12) .. "\r\n-" .. ("x"):rep(20)):rep(4)
UNIT = (UNIT .. ("0123456789"):rep(30)):sub(1, 251)
local BIG = 5 * 1000 * 1000

local BIGCHECK = [[
  local f = req.files.big
  local h = assert(io.open(f.path, "rb"))
  local data = h:read("a")
  h:close()
  local unit = ]] .. string.format("%q", UNIT) .. [[

  local expected = unit:rep(]] .. BIG .. [[ // #unit + 1):sub(1, ]] .. BIG .. [[)
  return { status = 200, body = dump({ size = f.size, bytes = #data, same = data == expected,
    path = f.path, filename = f.filename, form = req.form }) }
]]

local RAISE = [[
  error("upload-handler-raised-6d1 " .. req.uri .. " " .. req.files.f.path)
]]

local tmpdirs = {}
local function app_files()
  local files = {}
  for _, shape in ipairs(SHAPES) do
    local tmp = helper.tmpdir("uploads-" .. shape)
    tmpdirs[shape] = tmp
    local o = "{ tmpdir = " .. string.format("%q", tmp) .. " }"
    files[shape .. "/seen.lua"] = route(shape, o, SEEN)
    files[shape .. "/items/[id].lua"] = route(shape, o, SEEN)
    files[shape .. "/files.lua"] = route(shape, o, FILES)
    files[shape .. "/big.lua"] = route(shape, o, BIGCHECK)
    files[shape .. "/raise.lua"] = route(shape, o, RAISE)
    -- params inside params: the inner one leaves the decoded request alone
    files[shape .. "/nested.lua"] = route(shape, o, SEEN):gsub("return moonring%.params(%b())%(\n(.*)%)\n$",
      "return moonring.params%1(moonring.params%1(\n%2))\n")
    files[shape .. "/small.lua"] = route(shape, "{ tmpdir = " .. string.format("%q", tmp)
      .. ", max_form = 64, max_file = 1000, max_files = 2 }", SEEN)
  end
  files["parse.lua"] = helper.DUMP .. [[
local moonring = require "moonring"
return function(req)
  local t, err = moonring.parse_query(req.headers["x-q"])
  return { status = 200, body = dump({ t = t, err = err }) }
end
]]
  files["misuse.lua"] = helper.DUMP .. [[
local moonring = require "moonring"
return function(req)
  local out = {}
  for i, o in ipairs { "big", { max_file = "big" }, { max_files = -1 }, { tmpdir = 5 }, { nope = 1 } } do
    local ok, err = pcall(moonring.params, o)
    out[i] = ok and "no error" or err
  end
  return { status = 200, body = dump(out) }
end
]]
  return files
end

local server
setup(function()
  server = helper.start { app = helper.app(app_files()), args = { "--max-body-size", "8m" } }
end)
teardown(function()
  if server then server:stop() end
end)

local function seen(res)
  assert.are.equal(200, res.status, res.raw)
  return helper.undump(res.body)
end

local function ls(dir)
  local p = assert(io.popen("ls -A " .. helper.shell_quote(dir)))
  local names = {}
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  return names
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- A multipart body from parts { name =, value = } or { name =, filename =,
-- content_type =, value = }.
local function multipart(parts, boundary)
  boundary = boundary or BOUNDARY
  local out = {}
  for _, p in ipairs(parts) do
    out[#out + 1] = "--" .. boundary .. "\r\n"
    if p.filename then
      out[#out + 1] = string.format('Content-Disposition: form-data; name="%s"; filename="%s"\r\n',
        p.name, p.filename)
      out[#out + 1] = "Content-Type: " .. (p.content_type or "application/octet-stream") .. "\r\n"
    else
      out[#out + 1] = string.format('Content-Disposition: form-data; name="%s"\r\n', p.name)
    end
    out[#out + 1] = "\r\n" .. p.value .. "\r\n"
  end
  out[#out + 1] = "--" .. boundary .. "--\r\n"
  return table.concat(out)
end

local function post_multipart(path, body, boundary)
  return helper.request(server.port, "POST", path, {
    headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. (boundary or BOUNDARY) },
    body = body, timeout = 20 * helper.slow,
  })
end

local function post_form(path, body)
  return helper.request(server.port, "POST", path, {
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }, body = body,
  })
end

local function eventually_empty(dir)
  return helper.eventually(function() return #ls(dir) == 0 end, 3 * helper.slow)
end

for _, shape in ipairs(SHAPES) do
  local base = "/" .. shape

  describe("moonring.params (" .. shape .. " handler)", function()
    it("decodes the query: + and %XX, repeats as arrays in order, bare and empty values as \"\"", function()
      local t = seen(helper.get(server.port, base .. "/seen?a=1&a=2&b=x+y&c&d=&e=%41%2B%c3%A9&&=z&a[]=1&a=3"))
      assert.are.same({ "1", "2", "3" }, t.query.a)
      assert.are.equal("x y", t.query.b)
      assert.are.equal("", t.query.c)
      assert.are.equal("", t.query.d)
      assert.are.equal("A+\195\169", t.query.e)
      assert.are.equal("1", t.query["a[]"])
      assert.is_nil(t.query[""])
      assert.are.same({}, t.form)
      assert.are.same({}, t.files)
    end)

    it("gives an empty req.query without a query string", function()
      local t = seen(helper.get(server.port, base .. "/seen"))
      assert.are.same({}, t.query)
      t = seen(helper.get(server.port, base .. "/seen?"))
      assert.are.same({}, t.query)
    end)

    it("keeps path parameters in req.params, apart from the query", function()
      local t = seen(helper.get(server.port, base .. "/items/7?id=q"))
      assert.are.same({ id = "7" }, t.params)
      assert.are.same({ id = "q" }, t.query)
    end)

    it("answers 400 for invalid percent-encoding in the query, without calling the handler", function()
      for _, q in ipairs { "a=%zz", "a=%4", "b=1&%4=x", "a=100%" } do
        local res = helper.get(server.port, base .. "/seen?" .. q)
        assert.are.equal(400, res.status, q)
        assert.matches("percent%-encoding", res.body)
        assert.is_nil(res.body:find("called", 1, true))
      end
    end)

    it("decodes an application/x-www-form-urlencoded body into req.form", function()
      local t = seen(post_form(base .. "/seen?q=1", "name=J%C3%B6rg+K&tag=a&tag=b&empty=&flag"))
      assert.are.same({ name = "J\195\182rg K", tag = { "a", "b" }, empty = "", flag = "" }, t.form)
      assert.are.same({ q = "1" }, t.query)
    end)

    it("answers 400 for a form body with invalid percent-encoding", function()
      local res = post_form(base .. "/seen", "a=1&b=%G1")
      assert.are.equal(400, res.status)
      assert.matches("form body", res.body)
    end)

    it("answers 413 for a form body over max_form", function()
      local res = post_form(base .. "/small", "a=" .. ("x"):rep(100))
      assert.are.equal(413, res.status)
      assert.is_nil(res.body:find("called", 1, true))
      local t = seen(post_form(base .. "/small", "a=" .. ("x"):rep(20)))
      assert.are.equal(("x"):rep(20), t.form.a)
    end)

    it("leaves other bodies alone", function()
      local res = helper.request(server.port, "POST", base .. "/seen?x=1", {
        headers = { ["Content-Type"] = "application/json" }, body = '{"a":1}' })
      local t = seen(res)
      assert.are.same({}, t.form)
      assert.are.same({ x = "1" }, t.query)
    end)

    it("parses multipart/form-data: fields to req.form, files to temporary files in req.files", function()
      local body = multipart {
        { name = "title", value = "Hello, world" },
        { name = "tag", value = "a" },
        { name = "tag", value = "b\r\nc" },
        { name = "doc", filename = "notes.txt", content_type = "text/plain", value = "line 1\r\n--line 2\r\n" },
        { name = "pics", filename = "a.bin", value = "\0\1\2" },
        { name = "pics", filename = "b.bin", value = "" },
        { name = "none", filename = "", value = "" },            -- a file input left empty
      }
      local t = seen(post_multipart(base .. "/files", body))
      assert.are.same({ title = "Hello, world", tag = { "a", "b\r\nc" } }, t.form)
      local doc = t.files.doc[1]
      assert.are.equal("notes.txt", doc.filename)
      assert.are.equal("text/plain", doc.content_type)
      assert.are.equal("line 1\r\n--line 2\r\n", doc.content)
      assert.are.equal(#doc.content, doc.size)
      assert.are.equal(2, #t.files.pics)
      assert.are.equal("a.bin", t.files.pics[1].filename)
      assert.are.equal("application/octet-stream", t.files.pics[1].content_type)
      assert.are.equal("\0\1\2", t.files.pics[1].content)
      assert.are.equal("b.bin", t.files.pics[2].filename)
      assert.are.equal(0, t.files.pics[2].size)
      assert.is_nil(t.files.none)
      assert.are.equal(tmpdirs[shape], doc.path:match("^(.*)/[^/]+$"))
      assert.is_true(eventually_empty(tmpdirs[shape]), "temporary files left behind")
    end)

    it("streams a 5 MB upload into a temporary file that is gone after the request", function()
      local content = UNIT:rep(BIG // #UNIT + 1):sub(1, BIG)
      local body = multipart {
        { name = "caption", value = "big one" },
        { name = "big", filename = "big.bin", value = content },
      }
      local t = seen(post_multipart(base .. "/big", body))
      assert.are.equal(BIG, t.size)
      assert.are.equal(BIG, t.bytes)
      assert.is_true(t.same, "the file's content differs from what was sent")
      assert.are.equal("big.bin", t.filename)
      assert.are.same({ caption = "big one" }, t.form)
      assert.is_true(helper.eventually(function() return not exists(t.path) end, 3 * helper.slow),
        "temporary file still there: " .. t.path)
      assert.is_true(eventually_empty(tmpdirs[shape]))
    end)

    it("removes the temporary files when the handler raises", function()
      local res = post_multipart(base .. "/raise", multipart {
        { name = "f", filename = "f.txt", value = "data" } })
      assert.are.equal(500, res.status)
      local marker = "upload%-handler%-raised%-6d1 /" .. shape .. "/raise "
      local text = assert(server:wait_stderr(marker))
      local path = text:match(marker .. "(%S+)")
      assert.is_truthy(path)
      assert.is_true(helper.eventually(function() return not exists(path) end, 3 * helper.slow))
      assert.is_true(eventually_empty(tmpdirs[shape]))
    end)

    it("removes the temporary file when the client leaves mid-upload", function()
      local head = table.concat {
        "POST ", base, "/files HTTP/1.1\r\nHost: x\r\n",
        "Content-Type: multipart/form-data; boundary=", BOUNDARY, "\r\n",
        "Content-Length: 1000000\r\n\r\n",
        "--", BOUNDARY, "\r\n",
        'Content-Disposition: form-data; name="f"; filename="f.bin"\r\n\r\n',
        ("y"):rep(20000),
      }
      local c = helper.connect(server.port)
      assert(c:send(head))
      local appeared = helper.eventually(function() return #ls(tmpdirs[shape]) > 0 end, 3 * helper.slow)
      assert.is_true(appeared, "no temporary file was created")
      c:close()
      assert.is_true(eventually_empty(tmpdirs[shape]), "temporary file left after the client left")
      helper.assert_serves(server.port, base .. "/seen")
    end)

    it("answers 413 for a file over max_file, and 413 for more than max_files files", function()
      local res = post_multipart(base .. "/small", multipart {
        { name = "f", filename = "f.bin", value = ("z"):rep(1001) } })
      assert.are.equal(413, res.status)
      assert.matches("over 1000 bytes", res.body)
      res = post_multipart(base .. "/small", multipart {
        { name = "f", filename = "1", value = "1" },
        { name = "f", filename = "2", value = "2" },
        { name = "f", filename = "3", value = "3" } })
      assert.are.equal(413, res.status)
      assert.matches("more than 2 files", res.body)
      local t = seen(post_multipart(base .. "/small", multipart {
        { name = "f", filename = "1", value = ("z"):rep(1000) },
        { name = "f", filename = "2", value = "2" } }))
      assert.are.equal(2, #t.files.f)
      assert.are.equal(1000, t.files.f[1].size)
      assert.is_true(eventually_empty(tmpdirs[shape]))
    end)

    it("answers 400 for a malformed multipart body", function()
      local res = helper.request(server.port, "POST", base .. "/seen", {
        headers = { ["Content-Type"] = "multipart/form-data" }, body = "x" })
      assert.are.equal(400, res.status)
      assert.matches("boundary", res.body)
      local cut = multipart { { name = "a", value = "1" } }
      res = post_multipart(base .. "/seen", cut:sub(1, -(#BOUNDARY + 7)))
      assert.are.equal(400, res.status)
      assert.matches("closing boundary", res.body)
      res = post_multipart(base .. "/seen", "--" .. BOUNDARY .. "\r\nX-No-Disposition: 1\r\n\r\nv\r\n--"
        .. BOUNDARY .. "--\r\n")
      assert.are.equal(400, res.status)
      assert.is_true(eventually_empty(tmpdirs[shape]))
      helper.assert_serves(server.port, base .. "/seen")
    end)

    it("parses a multipart body that arrives a few bytes at a time, delimiters split across reads", function()
      local body = multipart {
        { name = "a", value = "x\r\n-" },
        { name = "f", filename = "f.txt", value = "\r\n--" .. BOUNDARY:sub(1, 6) .. "!" },
      }
      local head = table.concat {
        "POST ", base, "/files HTTP/1.1\r\nHost: x\r\nConnection: close\r\n",
        "Content-Type: multipart/form-data; boundary=", BOUNDARY, "\r\n",
        "Content-Length: ", #body, "\r\n\r\n",
      }
      local pieces = { head }
      for i = 1, #body, 5 do pieces[#pieces + 1] = body:sub(i, i + 4) end
      local text = helper.raw(server.port, pieces, { pause = 0.005 })
      local t = seen(helper.parse_response(text))
      assert.are.same({ a = "x\r\n-" }, t.form)
      assert.are.equal("\r\n--" .. BOUNDARY:sub(1, 6) .. "!", t.files.f[1].content)
      assert.is_true(eventually_empty(tmpdirs[shape]))
    end)

    it("decodes a body once when params wraps params", function()
      local t = seen(post_multipart(base .. "/nested?x=1", multipart {
        { name = "a", value = "1" }, { name = "f", filename = "f.txt", value = "data" } }))
      assert.are.same({ a = "1" }, t.form)
      assert.are.equal(4, t.files.f.size)
      assert.are.same({ x = "1" }, t.query)
      t = seen(post_form(base .. "/nested", "b=2"))
      assert.are.same({ b = "2" }, t.form)
      assert.is_true(eventually_empty(tmpdirs[shape]))
    end)

    it("takes a quoted boundary, a preamble and an epilogue", function()
      local b = "quoted boundary=x"
      local body = "preamble text\r\n" .. multipart({ { name = "a", value = "1" } }, b) .. "epilogue"
      local res = helper.request(server.port, "POST", base .. "/seen", {
        headers = { ["Content-Type"] = 'multipart/form-data; charset=utf-8; boundary="' .. b .. '"' },
        body = body })
      assert.are.same({ a = "1" }, seen(res).form)
    end)
  end)
end

describe("moonring.parse_query", function()
  it("is exported: a table, or nil and a message", function()
    local t = seen(helper.get(server.port, "/parse", { headers = { ["X-Q"] = "a=1&a=2&b=x+y" } }))
    assert.are.same({ a = { "1", "2" }, b = "x y" }, t.t)
    t = seen(helper.get(server.port, "/parse", { headers = { ["X-Q"] = "a=%zz" } }))
    assert.is_nil(t.t)
    assert.matches("invalid percent%-encoding", t.err)
  end)

  it("moonring.params refuses bad options at construction, naming the option", function()
    local t = seen(helper.get(server.port, "/misuse"))
    assert.matches("options table", t[1])
    assert.matches("max_file", t[2])
    assert.matches("max_files", t[3])
    assert.matches("tmpdir", t[4])
    assert.matches("unknown option nope", t[5])
  end)
end)

describe("default app /slow", function()
  it("reads s from the query, not from the tail of another name (?class=2&s=0.2)", function()
    helper.with_server({}, function(default)
      local res = helper.get(default.port, "/slow?class=2&s=0.2")
      assert.are.equal(200, res.status)
      assert.matches("^slept 0%.200s", res.body)
      res = helper.get(default.port, "/slow?class=0.3")
      assert.matches("^slept 0%.500s", res.body)         -- the default, not 0.3
      res = helper.get(default.port, "/slow?s=%zz")
      assert.are.equal(400, res.status)
    end)
  end)
end)
