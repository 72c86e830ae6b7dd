-- Async handlers and middleware of both shapes (DESIGN.md sections 4.4 and
-- 4.5): respond/raise from anywhere and only once, errors and deadlines of
-- async handlers, moonring.call across shapes, moonring.middleware, and
-- _middleware.lua files.
local helper = require "helper"

-- Route source with `moonring` and `dump` in scope.
local function src(body)
  return "local moonring = require \"moonring\"\n" .. helper.DUMP .. body
end

local APP = {
  ["index.lua"] = [[return function(req) return { status = 200, body = "ok\n" } end]],

  -- respond from a spawned task after a sleep
  ["spawned.lua"] = src [[
return function(req, respond, raise)
  moonring.spawn(function()
    moonring.sleep(0.05)
    respond({ status = 200, headers = { ["x-from"] = "task" }, body = "from task\n" })
  end)
end
]],
  -- respond called synchronously inside the handler
  ["direct.lua"] = src [[
return function(req, respond, raise)
  respond({ status = 200, body = "direct\n" })
end
]],
  -- respond twice: the first wins
  ["twice.lua"] = src [[
return function(req, respond, raise)
  respond({ status = 200, body = "first\n" })
  respond({ status = 201, body = "second\n" })
end
]],
  -- respond again later, from a task that outlives the request
  ["twicelater.lua"] = src [[
return function(req, respond, raise)
  respond({ status = 200, body = "first\n" })
  moonring.background(function()
    moonring.sleep(0.05)
    respond({ status = 202, body = "second\n" })
  end)
end
]],
  -- raise after respond is ignored
  ["raiseafter.lua"] = src [[
return function(req, respond, raise)
  respond({ status = 200, body = "answered\n" })
  raise("late-raise-c41e")
end
]],
  -- raise before responding
  ["raise.lua"] = src [[
return function(req, respond, raise)
  raise("raised-4e1d")
end
]],
  ["raiselater.lua"] = src [[
return function(req, respond, raise)
  moonring.spawn(function()
    moonring.sleep(0.02)
    raise("raised-later-88b0")
  end)
end
]],
  ["raisetable.lua"] = src [[
return function(req, respond, raise)
  raise({ code = 42 })
end
]],
  -- throws synchronously
  ["throw.lua"] = src [[
return function(req, respond, raise)
  error("async-throw-91ca")
end
]],

  -- moonring.call across shapes
  ["callsync.lua"] = src [[
local function inner(req, respond, raise)
  moonring.spawn(function()
    moonring.sleep(0.02)
    respond({ status = 200, body = "inner async" })
  end)
end
return function(req)
  local res = moonring.call(inner, req)
  return { status = res.status, body = res.body .. " via call\n" }
end
]],
  ["callsyncraise.lua"] = src [[
local function inner(req, respond, raise)
  moonring.spawn(function() raise("inner-raised-2b7") end)
end
return function(req)
  local ok, err = pcall(moonring.call, inner, req)
  return { status = 200, body = dump({ ok, type(err) == "string" and err:match("inner%-raised%-2b7") or err }) }
end
]],
  ["callasync.lua"] = src [[
local function inner(req) return { status = 200, body = "inner sync" } end
return function(req, respond, raise)
  moonring.call(inner, req, function(res)
    respond({ status = res.status, body = res.body .. " via async call\n" })
  end, raise)
end
]],
  ["callasyncthrow.lua"] = src [[
local function inner(req) error("inner-thrown-5f0") end
return function(req, respond, raise)
  moonring.call(inner, req, respond, function(err)
    respond({ status = 200, body = "raised: " .. tostring(err) })
  end)
end
]],

  -- plain-function middleware of both shapes
  ["plain_async_mw.lua"] = src [[
local function mw(h)
  return function(req, respond, raise)
    moonring.call(h, req, function(res)
      res.headers = res.headers or {}
      res.headers["x-mw"] = "async-mw"
      respond(res)
    end, raise)
  end
end
return mw(function(req) return { status = 200, body = "sync handler\n" } end)
]],
  ["plain_sync_mw.lua"] = src [[
local function mw(h)
  return function(req)
    local res = moonring.call(h, req)
    res.headers = res.headers or {}
    res.headers["x-mw"] = "sync-mw"
    return res
  end
end
return mw(function(req, respond, raise)
  moonring.spawn(function()
    moonring.sleep(0.02)
    respond({ status = 200, body = "async handler\n" })
  end)
end)
]],

  -- moonring.middleware around both shapes
  ["mw_sync.lua"] = src [[
local wrap = moonring.middleware{
  request = function(req) req.trail = "req-fn"; return req end,
  response = function(res, req)
    res.headers = res.headers or {}
    res.headers["x-mw"] = "response-fn"
    res.body = res.body .. "+response"
    return res
  end,
}
local h = wrap(function(req) return { status = 200, body = req.trail .. "+sync" } end)
local shape = debug.getinfo(h, "u").nparams
return function(req)
  local res = moonring.call(h, req)
  res.headers["x-shape"] = tostring(shape)
  return res
end
]],
  ["mw_async.lua"] = src [[
local wrap = moonring.middleware{
  request = function(req) req.trail = "req-fn" end,   -- nil: the same request
  response = function(res, req)
    res.headers = res.headers or {}
    res.headers["x-mw"] = "response-fn"
    res.body = res.body .. "+response"
  end,                                                 -- nil: the same response
}
local h = wrap(function(req, respond, raise)
  moonring.spawn(function()
    moonring.sleep(0.02)
    respond({ status = 200, body = req.trail .. "+async" })
  end)
end)
local shape = debug.getinfo(h, "u").nparams
return function(req, respond, raise)
  moonring.call(h, req, function(res)
    res.headers["x-shape"] = tostring(shape)
    respond(res)
  end, raise)
end
]],
  -- an async plain middleware over moonring.middleware over a sync handler,
  -- under a sync plain middleware
  ["mw_stack.lua"] = src [[
local m = moonring.middleware{
  response = function(res) res.body = res.body .. "+m" end,
}
local function async_mw(h)
  return function(req, respond, raise)
    moonring.call(h, req, function(res) res.body = res.body .. "+async"; respond(res) end, raise)
  end
end
local function sync_mw(h)
  return function(req)
    local res = moonring.call(h, req)
    res.body = res.body .. "+sync"
    return res
  end
end
return sync_mw(async_mw(m(function(req) return { status = 200, body = "h" } end)))
]],

  -- errors reaching moonring.middleware's error function
  ["_teapot.lua"] = [[
local moonring = require "moonring"
return moonring.middleware{
  error = function(err, req)
    local msg = type(err) == "table" and ("table:" .. tostring(err.code)) or tostring(err)
    return { status = 418, body = "teapot: " .. msg }
  end,
}
]],
  ["mwerr/async_raise.lua"] = src [[
return require("_teapot")(function(req, respond, raise) raise("raised-err-31") end)
]],
  ["mwerr/async_raise_later.lua"] = src [[
return require("_teapot")(function(req, respond, raise)
  moonring.spawn(function()
    moonring.sleep(0.02)
    raise({ code = 77 })
  end)
end)
]],
  ["mwerr/async_throw.lua"] = src [[
return require("_teapot")(function(req, respond, raise) error("thrown-err-32") end)
]],
  ["mwerr/sync_throw.lua"] = src [[
return require("_teapot")(function(req) error("thrown-err-33") end)
]],
  ["mwerr/sync_throw_after_sleep.lua"] = src [[
return require("_teapot")(function(req) moonring.sleep(0.02); error("thrown-err-34") end)
]],
  ["mwerr/reraise.lua"] = src [[
local wrap = moonring.middleware{ error = function(err, req) return nil end }
return wrap(function(req, respond, raise) raise("reraised-err-35") end)
]],

  -- the request function answering early
  ["early_sync.lua"] = src [[
local wrap = moonring.middleware{
  request = function(req) return nil, { status = 401, body = "early\n" } end,
}
return wrap(function(req) error("the handler must not run") end)
]],
  ["early_async.lua"] = src [[
local wrap = moonring.middleware{
  request = function(req) return req, { status = 401, body = "early\n" } end,
}
return wrap(function(req, respond, raise) raise("the handler must not run") end)
]],
}

local function with_app(args, fn)
  return helper.with_server({ files = APP, args = args }, fn)
end

local function get_ok(server, path)
  local res = helper.get(server.port, path)
  assert.are.equal(200, res.status, path .. " -> " .. res.raw)
  return res
end

describe("an async handler", function()
  it("answers with respond called from a spawned task after a sleep", function()
    with_app({}, function(server)
      local res = get_ok(server, "/spawned")
      assert.are.equal("from task\n", res.body)
      assert.are.equal("task", res.headers["x-from"])
    end)
  end)

  it("answers with respond called synchronously inside the handler", function()
    with_app({}, function(server)
      assert.are.equal("direct\n", get_ok(server, "/direct").body)
    end)
  end)

  it("declared with three parameters loads as a route", function()
    with_app({}, function(server)
      local res = helper.request(server.port, "POST", "/direct", { body = "x" })
      assert.are.equal(200, res.status)
    end)
  end)
end)

describe("respond called twice", function()
  -- Sends GET path on a keep-alive connection, then GET /direct on the same
  -- connection; returns both responses and whatever else arrived.
  local function two_on_one_connection(server, path)
    local c = helper.connect(server.port)
    finally(function() c:close() end)
    c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\n\r\n")
    local r1 = c:response()
    helper.sleep(0.1) -- room for a stray second response to arrive
    c:send("GET /direct HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    local r2 = c:response()
    local rest = c:read_until_close(2 * helper.slow)
    return r1, r2, rest
  end

  local function assert_one_warn(server)
    local log = server:wait_stderr("%[warn%]")
    assert.is_truthy(log, "no [warn] line:\n" .. server:stderr_text())
    helper.sleep(0.15)
    log = server:stderr_text()
    assert.are.equal(1, helper.count(log, "[warn]"), "not exactly one [warn] line:\n" .. log)
    assert.matches("%[warn%][^\n]*request %d+[^\n]*already responded", log)
    return log
  end

  it("sends exactly one response, keeps the connection usable and warns once", function()
    with_app({ "--access-log", "off" }, function(server)
      local r1, r2, rest = two_on_one_connection(server, "/twice")
      assert.are.equal(200, r1.status)
      assert.are.equal("first\n", r1.body)
      assert.are.equal(200, r2.status)
      assert.are.equal("direct\n", r2.body, "the second request got someone else's answer")
      assert.are.equal("", rest, "bytes after the second response")
      assert_one_warn(server)
    end)
  end)

  it("ignores a second respond called later from a task", function()
    with_app({ "--access-log", "off" }, function(server)
      local r1, r2, rest = two_on_one_connection(server, "/twicelater")
      assert.are.equal(200, r1.status)
      assert.are.equal("first\n", r1.body)
      assert.are.equal("direct\n", r2.body)
      assert.are.equal("", rest)
      assert_one_warn(server)
    end)
  end)

  it("ignores raise after respond, with one [warn] and no [error]", function()
    with_app({ "--access-log", "off" }, function(server)
      local r1, r2, rest = two_on_one_connection(server, "/raiseafter")
      assert.are.equal(200, r1.status)
      assert.are.equal("answered\n", r1.body)
      assert.are.equal("direct\n", r2.body)
      assert.are.equal("", rest)
      local log = assert_one_warn(server)
      assert.is_nil(log:find("[error]", 1, true), "raise after respond logged an error:\n" .. log)
    end)
  end)
end)

describe("raise before responding", function()
  it("answers 500 and logs one [error] line with the route and a traceback", function()
    with_app({ "--access-log", "off" }, function(server)
      local res = helper.get(server.port, "/raise")
      assert.are.equal(500, res.status, res.raw)
      assert.are.equal("Internal Server Error\n", res.body)
      local log = server:wait_stderr("stack traceback")
      assert.is_truthy(log, "no traceback logged:\n" .. server:stderr_text())
      helper.sleep(0.1)
      log = server:stderr_text()
      assert.are.equal(1, helper.count(log, "raised-4e1d"), "not logged exactly once:\n" .. log)
      assert.are.equal(1, helper.count(log, "[error]"), log)
      assert.matches("%[error%] request %d+ GET /raise %(route /raise%): [^\n]*raised%-4e1d\nstack traceback", log)
      helper.assert_serves(server.port, "/")
    end)
  end)

  it("answers 500 when raise comes from a task later", function()
    with_app({ "--access-log", "off" }, function(server)
      local res = helper.get(server.port, "/raiselater")
      assert.are.equal(500, res.status, res.raw)
      assert.is_truthy(server:wait_stderr("raised%-later%-88b0"), "not logged")
      assert.matches("%[error%][^\n]*route /raiselater", server:stderr_text())
    end)
  end)

  it("answers 500 for a table error value", function()
    with_app({}, function(server)
      local res = helper.get(server.port, "/raisetable")
      assert.are.equal(500, res.status, res.raw)
      assert.are.equal("Internal Server Error\n", res.body)
      assert.is_truthy(server:wait_stderr("%[error%][^\n]*route /raisetable"), "not logged")
      helper.assert_serves(server.port, "/")
    end)
  end)

  it("puts the raised message in the body in --dev mode", function()
    with_app({ "--dev" }, function(server)
      local res = helper.get(server.port, "/raise")
      assert.are.equal(500, res.status)
      assert.is_truthy(res.body:find("raised-4e1d", 1, true), res.body)
    end)
  end)
end)

describe("an async handler that throws synchronously", function()
  it("answers 500 and logs the error once", function()
    with_app({ "--access-log", "off" }, function(server)
      local res = helper.get(server.port, "/throw")
      assert.are.equal(500, res.status, res.raw)
      assert.are.equal("Internal Server Error\n", res.body)
      assert.is_truthy(server:wait_stderr("stack traceback"), "no traceback")
      helper.sleep(0.1)
      local log = server:stderr_text()
      assert.are.equal(1, helper.count(log, "async-throw-91ca"), log)
      assert.matches("throw%.lua:%d+: async%-throw%-91ca", log)
      helper.assert_serves(server.port, "/")
    end)
  end)
end)

describe("an async handler that never responds", function()
  it("gets 504 at --request-timeout and its spawned task is cancelled", function()
    local marker_dir = helper.tmpdir("marker")
    local marker = marker_dir .. "/marker"
    local files = {
      ["index.lua"] = APP["index.lua"],
      ["never.lua"] = src(string.format([[
local MARKER = %q
return function(req, respond, raise)
  moonring.spawn(function()
    local ok, err = pcall(moonring.sleep, 5)
    local f = assert(io.open(MARKER, "w"))
    f:write(tostring(ok), " ", tostring(err))
    f:close()
  end)
end
]], marker)),
    }
    helper.with_server({ files = files, args = { "--request-timeout", "0.5", "--access-log", "off" } },
      function(server)
        local res = helper.get(server.port, "/never", { timeout = 5 * helper.slow })
        assert.are.equal(504, res.status, res.raw)
        assert.are.equal("Gateway Timeout\n", res.body)
        assert.is_true(res.elapsed >= 0.45, "504 before the deadline: " .. res.elapsed)
        assert.is_true(res.elapsed < 4 * helper.slow, "504 long after the deadline: " .. res.elapsed)
        local text
        local deadline = helper.now() + 2 * helper.slow
        repeat
          text = helper.read_file(marker)
          if text and text ~= "" then break end
          helper.sleep(0.02)
        until helper.now() > deadline
        assert.are.equal("false cancelled", text, "the spawned task was not cancelled")
        local log = server:wait_stderr("no response within")
        assert.is_truthy(log, "504 not logged:\n" .. server:stderr_text())
        assert.matches("%[error%] request %d+: no response within [%d.]+s: 504, handler cancelled", log)
        helper.assert_serves(server.port, "/")
      end)
  end)
end)

describe("moonring.call", function()
  it("returns the response of an async handler called sync-style", function()
    with_app({}, function(server)
      assert.are.equal("inner async via call\n", get_ok(server, "/callsync").body)
    end)
  end)

  it("raises in the caller what an async handler called sync-style raised", function()
    with_app({}, function(server)
      assert.are.same({ false, "inner-raised-2b7" }, helper.undump(get_ok(server, "/callsyncraise").body))
    end)
  end)

  it("delivers a sync handler's response through respond when called async-style", function()
    with_app({}, function(server)
      assert.are.equal("inner sync via async call\n", get_ok(server, "/callasync").body)
    end)
  end)

  it("delivers a sync handler's error through raise when called async-style", function()
    with_app({}, function(server)
      local body = get_ok(server, "/callasyncthrow").body
      assert.matches("^raised: [^\n]*inner%-thrown%-5f0", body)
    end)
  end)
end)

describe("plain-function middleware", function()
  it("of async shape wraps a sync handler", function()
    with_app({}, function(server)
      local res = get_ok(server, "/plain_async_mw")
      assert.are.equal("sync handler\n", res.body)
      assert.are.equal("async-mw", res.headers["x-mw"])
    end)
  end)

  it("of sync shape wraps an async handler", function()
    with_app({}, function(server)
      local res = get_ok(server, "/plain_sync_mw")
      assert.are.equal("async handler\n", res.body)
      assert.are.equal("sync-mw", res.headers["x-mw"])
    end)
  end)

  it("stacks with moonring.middleware over handlers of both shapes", function()
    with_app({}, function(server)
      assert.are.equal("h+m+async+sync", get_ok(server, "/mw_stack").body)
    end)
  end)
end)

describe("moonring.middleware", function()
  it("wraps a sync handler into a sync handler, running request and response fns", function()
    with_app({}, function(server)
      local res = get_ok(server, "/mw_sync")
      assert.are.equal("req-fn+sync+response", res.body)
      assert.are.equal("response-fn", res.headers["x-mw"])
      assert.are.equal("1", res.headers["x-shape"])
    end)
  end)

  it("wraps an async handler into an async handler; nil from the fns keeps the value", function()
    with_app({}, function(server)
      local res = get_ok(server, "/mw_async")
      assert.are.equal("req-fn+async+response", res.body)
      assert.are.equal("response-fn", res.headers["x-mw"])
      assert.are.equal("3", res.headers["x-shape"])
    end)
  end)

  local function teapot(server, path, pattern)
    local res = helper.get(server.port, "/mwerr/" .. path)
    assert.are.equal(418, res.status, path .. " -> " .. res.raw)
    assert.matches("^teapot: " .. pattern, res.body)
  end

  it("hands an error passed to raise to the error fn", function()
    with_app({}, function(server)
      teapot(server, "async_raise", "raised%-err%-31$")
    end)
  end)

  it("hands a table error raised later from a task to the error fn", function()
    with_app({}, function(server)
      teapot(server, "async_raise_later", "table:77$")
    end)
  end)

  it("hands an error thrown by an async handler to the error fn", function()
    with_app({}, function(server)
      teapot(server, "async_throw", "[^\n]*thrown%-err%-32")
    end)
  end)

  it("hands an error thrown by a sync handler to the error fn", function()
    with_app({}, function(server)
      teapot(server, "sync_throw", "[^\n]*thrown%-err%-33")
      teapot(server, "sync_throw_after_sleep", "[^\n]*thrown%-err%-34")
    end)
  end)

  it("lets the error go on when the error fn returns nil: 500", function()
    with_app({ "--access-log", "off" }, function(server)
      local res = helper.get(server.port, "/mwerr/reraise")
      assert.are.equal(500, res.status, res.raw)
      assert.is_truthy(server:wait_stderr("reraised%-err%-35"), "the error was not logged")
    end)
  end)

  it("answers early from the request fn without calling a sync handler", function()
    with_app({ "--access-log", "off" }, function(server)
      local res = helper.get(server.port, "/early_sync")
      assert.are.equal(401, res.status, res.raw)
      assert.are.equal("early\n", res.body)
      helper.sleep(0.1)
      assert.is_nil(server:stderr_text():find("must not run", 1, true))
    end)
  end)

  it("answers early from the request fn without calling an async handler", function()
    with_app({ "--access-log", "off" }, function(server)
      local res = helper.get(server.port, "/early_async")
      assert.are.equal(401, res.status, res.raw)
      assert.are.equal("early\n", res.body)
      helper.sleep(0.1)
      assert.is_nil(server:stderr_text():find("must not run", 1, true))
    end)
  end)
end)

describe("_middleware.lua files", function()
  -- Each layer appends its name to req.trail on the way in and to the
  -- x-trail header on the way out.
  local ROOT_MW = [[
local moonring = require "moonring"
return function(h)
  return function(req)
    req.trail = (req.trail and req.trail .. "," or "") .. "root"
    local res = moonring.call(h, req)
    res.headers = res.headers or {}
    res.headers["x-trail"] = (res.headers["x-trail"] and res.headers["x-trail"] .. "," or "") .. "root"
    return res
  end
end
]]
  local SUB_MW = [[
local moonring = require "moonring"
return moonring.middleware{
  request = function(req)
    req.trail = (req.trail and req.trail .. "," or "") .. "sub"
  end,
  response = function(res, req)
    res.headers = res.headers or {}
    res.headers["x-trail"] = (res.headers["x-trail"] and res.headers["x-trail"] .. "," or "") .. "sub"
  end,
}
]]
  local HANDLER = [[
return function(req)
  return { status = 200, headers = { ["x-trail"] = "handler" }, body = (req.trail or "") .. ",handler" }
end
]]
  local FILES = {
    ["_middleware.lua"] = ROOT_MW,
    ["top.lua"] = HANDLER,
    ["sub/_middleware.lua"] = SUB_MW,
    ["sub/page.lua"] = HANDLER,
    ["sub/apage.lua"] = [[
local moonring = require "moonring"
return function(req, respond, raise)
  moonring.spawn(function()
    moonring.sleep(0.02)
    respond({ status = 200, headers = { ["x-trail"] = "handler" }, body = (req.trail or "") .. ",handler" })
  end)
end
]],
    ["sub/items.lua"] = [[
return { GET = function(req) return { status = 200, body = "items" } end }
]],
  }

  it("apply root then subdirectory middleware, outermost first", function()
    helper.with_server({ files = FILES }, function(server)
      local res = get_ok(server, "/sub/page")
      assert.are.equal("root,sub,handler", res.body)
      assert.are.equal("handler,sub,root", res.headers["x-trail"])
      res = get_ok(server, "/sub/apage")
      assert.are.equal("root,sub,handler", res.body)
      assert.are.equal("handler,sub,root", res.headers["x-trail"])
    end)
  end)

  it("apply only the directories at and above the route", function()
    helper.with_server({ files = FILES }, function(server)
      local res = get_ok(server, "/top")
      assert.are.equal("root,handler", res.body)
      assert.are.equal("handler,root", res.headers["x-trail"])
    end)
  end)

  it("see the 405 answers of a method table route", function()
    helper.with_server({ files = FILES }, function(server)
      local res = helper.request(server.port, "DELETE", "/sub/items")
      assert.are.equal(405, res.status, res.raw)
      assert.is_truthy(res.headers.allow)
      assert.are.equal("sub,root", res.headers["x-trail"])
      local ok = get_ok(server, "/sub/items")
      assert.are.equal("items", ok.body)
      assert.are.equal("sub,root", ok.headers["x-trail"])
    end)
  end)
end)

describe("load errors", function()
  local function run_app(files)
    local dir = helper.app(files)
    local r = helper.run({ "--port", "0", dir })
    helper.remove(dir)
    return r
  end

  it("refuse a _middleware.lua that returns a non-function, naming the file", function()
    local r = run_app {
      ["index.lua"] = [[return function(req) return { status = 200 } end]],
      ["sub/_middleware.lua"] = "return 42\n",
      ["sub/page.lua"] = [[return function(req) return { status = 200 } end]],
    }
    assert.are_not.equal(0, r.status, "stderr: " .. r.stderr)
    assert.matches("sub/_middleware%.lua", r.stderr)
    assert.is_nil(r.stdout:find("listening on", 1, true))
  end)

  it("refuse a root _middleware.lua that returns a table, naming the file", function()
    local r = run_app {
      ["index.lua"] = [[return function(req) return { status = 200 } end]],
      ["_middleware.lua"] = "return {}\n",
    }
    assert.are_not.equal(0, r.status, "stderr: " .. r.stderr)
    assert.matches("_middleware%.lua", r.stderr)
    assert.is_nil(r.stdout:find("listening on", 1, true))
  end)

  it("refuse a handler declaring two parameters, naming the file and line", function()
    local r = run_app {
      ["two.lua"] = "-- a comment\n\nreturn function(req, respond)\n  respond({ status = 200 })\nend\n",
    }
    assert.are_not.equal(0, r.status, "stderr: " .. r.stderr)
    assert.matches("two%.lua:3:", r.stderr)
    assert.matches("function%(req%) or function%(req, respond, raise%)", r.stderr)
    assert.is_nil(r.stdout:find("listening on", 1, true))
  end)

  it("refuse a two-parameter handler in a method table, naming the file and line", function()
    local r = run_app {
      ["items.lua"] = "return {\n  GET = function(req) return { status = 200 } end,\n"
        .. "  POST = function(req, respond)\n    respond({ status = 201 })\n  end,\n}\n",
    }
    assert.are_not.equal(0, r.status, "stderr: " .. r.stderr)
    assert.matches("items%.lua:3:", r.stderr)
  end)

  it("accept handlers declaring three parameters", function()
    local files = {
      ["a.lua"] = "return function(req, respond, raise)\n  respond({ status = 200, body = 'a' })\nend\n",
      ["b.lua"] = "return { POST = function(req, respond, raise) respond({ status = 201, body = 'b' }) end }\n",
    }
    helper.with_server({ files = files }, function(server)
      assert.are.equal("a", get_ok(server, "/a").body)
      local res = helper.request(server.port, "POST", "/b", { body = "x" })
      assert.are.equal(201, res.status)
      assert.are.equal("b", res.body)
    end)
  end)
end)
