-- Hot reload (issue 8, /work/notes/reload.md): with --watch (or --dev) a save
-- under APP reloads the app within a second; SIGHUP reloads in any mode. A
-- reload is all-or-nothing: a broken file keeps the previous code serving
-- (and says why in the log, or, with --dev, in 500 answers). Streams opened
-- before a reload keep going; moonring.state survives; moonring.on_reload
-- hooks let old top-level code stop its tasks. Files are saved both ways
-- editors do: in place (helper.write_file) and by rename over the old file
-- (helper.replace_file).
local helper = require "helper"

local RELOADED = "] reloaded "
local FAILED = "] reload failed, the previous code keeps serving: "

-- A route answering `body` (200, text/plain).
local function text_route(body)
  return string.format("return function(req) return { status = 200, body = %q } end\n", body)
end

-- A file with a syntax error on line 2.
local SYNTAX_ERROR = "return function(req)\n  local x = = 1\nend\n"

local function body_of(port, path)
  local res = helper.get(port, path)
  return res.status == 200 and res.body or (res.status .. " " .. res.body)
end

-- Polls GET path until its answer is `want` (a 200 with that body, or for a
-- number: that status). Fails the spec naming the last answer otherwise.
local function wait_answer(port, path, want, timeout, what)
  local last
  local ok = helper.eventually(function()
    local res = helper.get(port, path)
    last = res
    if type(want) == "number" then return res.status == want end
    return res.status == 200 and res.body == want
  end, timeout or 1 * helper.slow)
  if not ok then
    error(string.format("%s: GET %s never answered %q; last answer %d %q",
      what or "after the save", path, tostring(want), last.status, last.body), 2)
  end
end

-- Saves `text` to APP/name and waits for one more `reloaded` log line.
local function save_and_wait_reload(server, name, text, save)
  local before = server:count_stderr(RELOADED)
  ;(save or helper.replace_file)(server.app .. "/" .. name, text)
  local ok = server:wait_stderr_count(RELOADED, before + 1, 3 * helper.slow)
  assert(ok, "no reload logged after saving " .. name .. "; stderr:\n" .. server:stderr_text())
end

-- Saves `text` to APP/name and waits for one more `reload failed` line
-- (`needle`: how it starts, default FAILED).
local function save_and_wait_failure(server, name, text, save, needle)
  needle = needle or FAILED
  local before = server:count_stderr(needle)
  ;(save or helper.write_file)(server.app .. "/" .. name, text)
  local ok = server:wait_stderr_count(needle, before + 1, 3 * helper.slow)
  assert(ok, "no reload failure logged after saving " .. name .. "; stderr:\n" .. server:stderr_text())
  return server:stderr_text()
end

-- The last `reload failed` line of the log.
local function last_failure(text)
  local line
  for l in text:gmatch("[^\n]+") do
    if l:find(FAILED, 1, true) then line = l end
  end
  return line
end

describe("hot reload with --watch", function()
  it("changes a route's answer within a second of saving its file", function()
    helper.with_server({ files = { ["hello.lua"] = text_route("v1") }, args = { "--watch" } }, function(server)
      local path = server.app .. "/hello.lua"
      assert.are.equal("v1", body_of(server.port, "/hello"))
      helper.replace_file(path, text_route("v2"))
      wait_answer(server.port, "/hello", "v2", 1 * helper.slow, "saved by rename")
      -- the file is now a new inode: the watch must still see the next saves
      helper.replace_file(path, text_route("v3"))
      wait_answer(server.port, "/hello", "v3", 1 * helper.slow, "saved by rename again")
      helper.write_file(path, text_route("v4"))
      wait_answer(server.port, "/hello", "v4", 1 * helper.slow, "saved in place")
      assert.matches("%[info%] reloaded [^\n]+: %d+ routes? in [%d.]+ ms", server:stderr_text())
    end)
  end)

  it("keeps the old answer on a syntax error, logs file and line, and reloads again once fixed", function()
    local files = { ["hello.lua"] = text_route("v1"), ["other.lua"] = text_route("other v1") }
    helper.with_server({ files = files, args = { "--watch" } }, function(server)
      local text = save_and_wait_failure(server, "hello.lua", SYNTAX_ERROR, helper.write_file)
      local line = last_failure(text)
      assert.matches("%[error%] reload failed, the previous code keeps serving: [^\n]*hello%.lua:2: ", line)
      assert.are.equal("v1", body_of(server.port, "/hello"))
      assert.are.equal("other v1", body_of(server.port, "/other"))

      -- all or nothing: another file's change waits while hello.lua is broken;
      -- the same failure, met again, is not logged again
      helper.replace_file(server.app .. "/other.lua", text_route("other v2"))
      helper.sleep(0.5 * helper.slow)
      assert.are.equal("other v1", body_of(server.port, "/other"))
      assert.are.equal("v1", body_of(server.port, "/hello"))

      save_and_wait_reload(server, "hello.lua", text_route("v2"), helper.write_file)
      assert.are.equal("v2", body_of(server.port, "/hello"))
      assert.are.equal("other v2", body_of(server.port, "/other"))
      assert.are.equal(1, server:count_stderr(FAILED), server:stderr_text())

      -- and it keeps reloading afterwards
      helper.replace_file(server.app .. "/hello.lua", text_route("v3"))
      wait_answer(server.port, "/hello", "v3")
    end)
  end)

  it("keeps the old code for an error at a file's top level and for a handler of the wrong shape", function()
    helper.with_server({ files = { ["hello.lua"] = text_route("v1") }, args = { "--watch" } }, function(server)
      local text = save_and_wait_failure(server, "hello.lua", 'error("top-level boom 7f3")\n', helper.replace_file)
      assert.matches("hello%.lua:1: top%-level boom 7f3", last_failure(text))
      assert.are.equal("v1", body_of(server.port, "/hello"))

      text = save_and_wait_failure(server, "hello.lua",
        "return function(a, b)\n  return { status = 200, body = 'two' }\nend\n", helper.write_file)
      local line = last_failure(text)
      assert.matches("hello%.lua:1: ", line)
      assert.matches("2 parameters", line)
      assert.are.equal("v1", body_of(server.port, "/hello"))

      text = save_and_wait_failure(server, "hello.lua", "return 42\n", helper.replace_file)
      assert.matches("hello%.lua", last_failure(text))
      assert.are.equal("v1", body_of(server.port, "/hello"))

      helper.replace_file(server.app .. "/hello.lua", text_route("v2"))
      wait_answer(server.port, "/hello", "v2")
    end)
  end)

  it("serves new files, forgets deleted ones, and watches directories created after start", function()
    helper.with_server({ files = { ["index.lua"] = text_route("home") }, args = { "--watch" } }, function(server)
      local app = server.app
      assert.are.equal(404, helper.get(server.port, "/new").status)
      helper.write_file(app .. "/new.lua", text_route("new"))
      wait_answer(server.port, "/new", "new", nil, "after creating new.lua")
      os.remove(app .. "/new.lua")
      wait_answer(server.port, "/new", 404, nil, "after deleting new.lua")

      -- an empty directory first, a route in it once the server had time to
      -- see the directory: only a watch on the new directory sees that file
      assert(os.execute("mkdir " .. helper.shell_quote(app .. "/sub")))
      helper.sleep(0.5 * helper.slow)
      helper.write_file(app .. "/sub/page.lua", text_route("page v1"))
      wait_answer(server.port, "/sub/page", "page v1", nil, "after creating sub/page.lua")
      helper.replace_file(app .. "/sub/page.lua", text_route("page v2"))
      wait_answer(server.port, "/sub/page", "page v2", nil, "after saving sub/page.lua")

      -- a tree made at once, and a parameter route in it
      helper.write_file(app .. "/a/b/[id].lua",
        "return function(req) return { status = 200, body = 'id ' .. req.params.id } end\n")
      wait_answer(server.port, "/a/b/42", "id 42", nil, "after creating a/b/[id].lua")

      -- a renamed file and a renamed directory move their routes
      assert(os.rename(app .. "/sub/page.lua", app .. "/sub/leaf.lua"))
      wait_answer(server.port, "/sub/leaf", "page v2", nil, "after renaming sub/page.lua")
      assert.are.equal(404, helper.get(server.port, "/sub/page").status)
      assert(os.rename(app .. "/sub", app .. "/moved"))
      wait_answer(server.port, "/moved/leaf", "page v2", nil, "after renaming sub/")
      assert.are.equal(404, helper.get(server.port, "/sub/leaf").status)

      -- a directory removed, then made again under the same name, is watched again
      helper.remove(app .. "/moved")
      wait_answer(server.port, "/moved/leaf", 404, nil, "after deleting moved/")
      assert(os.execute("mkdir " .. helper.shell_quote(app .. "/moved")))
      helper.sleep(0.5 * helper.slow)
      helper.write_file(app .. "/moved/leaf.lua", text_route("leaf v3"))
      wait_answer(server.port, "/moved/leaf", "leaf v3", nil, "after creating moved/leaf.lua again")
      assert.are.equal("home", body_of(server.port, "/"))
      assert.are.equal("id 7", body_of(server.port, "/a/b/7"))
    end)
  end)

  it("reloads an edited _lib module that routes require, and an edited _middleware.lua", function()
    local files = {
      ["_lib/greeting.lua"] = 'return { text = "hello" }\n',
      ["greet.lua"] = [[
local greeting = require "_lib.greeting"
return function(req) return { status = 200, body = greeting.text } end
]],
      ["shout.lua"] = [[
local greeting = require "_lib.greeting"
return function(req) return { status = 200, body = greeting.text:upper() } end
]],
      ["_middleware.lua"] = [[
return function(handler)
  return function(req)
    local res = handler(req)
    res.headers = { ["x-mw"] = "mw1" }
    return res
  end
end
]],
    }
    helper.with_server({ files = files, args = { "--watch" } }, function(server)
      assert.are.equal("hello", body_of(server.port, "/greet"))
      assert.are.equal("mw1", helper.get(server.port, "/greet").headers["x-mw"])
      helper.replace_file(server.app .. "/_lib/greeting.lua", 'return { text = "bonjour" }\n')
      wait_answer(server.port, "/greet", "bonjour", nil, "after saving _lib/greeting.lua")
      assert.are.equal("BONJOUR", body_of(server.port, "/shout"))

      helper.write_file(server.app .. "/_middleware.lua", (files["_middleware.lua"]:gsub("mw1", "mw2")))
      assert.is_truthy(helper.eventually(function()
        return helper.get(server.port, "/greet").headers["x-mw"] == "mw2"
      end, 1 * helper.slow), "the middleware was not reloaded")
      assert.are.equal("bonjour", body_of(server.port, "/greet"))

      -- a module the routes need is deleted: that reload fails, naming the
      -- require; the module back, the routes reload
      local module_text = helper.read_file(server.app .. "/_lib/greeting.lua")
      local before = server:count_stderr(FAILED)
      os.remove(server.app .. "/_lib/greeting.lua")
      assert.is_truthy(server:wait_stderr_count(FAILED, before + 1, 3 * helper.slow), server:stderr_text())
      assert.matches("%a+%.lua:1: module '_lib%.greeting' not found", last_failure(server:stderr_text()))
      assert.are.equal("bonjour", body_of(server.port, "/greet"))
      helper.write_file(server.app .. "/_lib/greeting.lua", (module_text:gsub("bonjour", "hallo")))
      wait_answer(server.port, "/greet", "hallo", nil, "after restoring _lib/greeting.lua")
    end)
  end)

  it("reloads a single-file app when its file is saved", function()
    local dir = helper.app { ["app.lua"] = text_route("one") }
    helper.with_server({ app = dir .. "/app.lua", args = { "--watch" } }, function(server)
      assert.are.equal("one", body_of(server.port, "/any/path"))
      helper.replace_file(dir .. "/app.lua", text_route("two"))
      wait_answer(server.port, "/any/path", "two")
      helper.write_file(dir .. "/app.lua", text_route("three"))
      wait_answer(server.port, "/any/path", "three")
    end)
  end)

  it("turns a burst of saves into few reloads, ending on the last save", function()
    helper.with_server({ files = { ["b.lua"] = text_route("0") }, args = { "--watch" } }, function(server)
      local before = server:count_stderr(RELOADED)
      for i = 1, 30 do helper.replace_file(server.app .. "/b.lua", text_route(tostring(i))) end
      wait_answer(server.port, "/b", "30")
      helper.sleep(0.3 * helper.slow)
      local reloads = server:count_stderr(RELOADED) - before
      assert.is_true(reloads >= 1 and reloads < 10, reloads .. " reloads for a burst of 30 saves")
      assert.are.equal("30", body_of(server.port, "/b"))
    end)
  end)

  it("finishes a request in flight on its old code; the next one runs the new code", function()
    local files = { ["slow.lua"] = [[
local moonring = require "moonring"
return function(req)
  moonring.sleep(1)
  return { status = 200, body = "old" }
end
]] }
    helper.with_server({ files = files, args = { "--watch" } }, function(server)
      local c = helper.connect(server.port)
      c:send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
      helper.sleep(0.2 * helper.slow)
      save_and_wait_reload(server, "slow.lua", text_route("new"), helper.write_file)
      assert.are.equal("new", body_of(server.port, "/slow"))
      local res = c:response()
      assert.are.equal(200, res.status)
      assert.are.equal("old", res.body)
      c:send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.are.equal("new", c:response().body, "a kept-alive connection stayed on the old code")
      c:close()
    end)
  end)

  it("keeps an SSE stream opened before a reload streaming after it, on its old code", function()
    local function events_route(word)
      return string.format([[
local moonring = require "moonring"
local sse = require "moonring.sse"
return function(req)
  return sse.response(req, function(events)
    for i = 1, 400 do
      if not events:send(%q .. " " .. i) then return end
      moonring.sleep(0.05)
    end
  end, { heartbeat = 0 })
end
]], word)
    end
    local files = { ["events.lua"] = events_route("tick"), ["index.lua"] = text_route("v1") }
    helper.with_server({ files = files, args = { "--watch" } }, function(server)
      local c = helper.connect(server.port)
      c:send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
      local buf = ""
      -- reads until `pattern` is in what the stream sent, or fails
      local function read_until(pattern, what)
        local deadline = helper.now() + 3 * helper.slow
        while not buf:find(pattern) do
          local left = deadline - helper.now()
          assert(left > 0, "stream: no " .. what .. " in time; got:\n" .. buf)
          c.sock:settimeout(math.min(left, 0.2))
          local data, err, partial = c.sock:receive(8192)
          buf = buf .. (data or partial or "")
          assert(err == nil or err == "timeout", "stream ended (" .. tostring(err) .. "):\n" .. buf)
        end
      end
      read_until("data: tick 2\n", "second event")
      assert.matches("^HTTP/1%.1 200", buf)

      save_and_wait_reload(server, "events.lua", events_route("tock"))
      save_and_wait_reload(server, "index.lua", text_route("v2"), helper.write_file)
      local seen = tonumber(buf:match(".*data: tick (%d+)\n"))
      -- three more events after both reload lines, still from the old code
      read_until("data: tick " .. (seen + 3) .. "\n", "events after the reload")
      assert.is_nil(buf:find("tock", 1, true), "the old stream switched code")
      c:close()

      local fresh = helper.connect(server.port)
      fresh:send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
      c, buf = fresh, ""
      read_until("data: tock 1\n", "new code's first event on a new stream")
      fresh:close()
    end)
  end)

  it("keeps moonring.state across reloads and runs its init once", function()
    local function counter_route(version)
      return string.format([[
local moonring = require "moonring"
local meta = moonring.state("meta")
local counter = moonring.state("counter", function()
  meta.inits = (meta.inits or 0) + 1
  return { n = 0 }
end)
local hits = moonring.state("hits", { n = 0 })
return function(req)
  counter.n = counter.n + 1
  hits.n = hits.n + 1
  return { status = 200, body = %q .. " " .. counter.n .. " " .. meta.inits .. " " .. hits.n }
end
]], version)
    end
    helper.with_server({ files = { ["count.lua"] = counter_route("v1") }, args = { "--watch" } }, function(server)
      local last = 0
      local function hit(version)
        local res = helper.get(server.port, "/count")
        assert.are.equal(200, res.status, res.raw)
        local v, n, inits, hits = res.body:match("^(%S+) (%d+) (%d+) (%d+)$")
        assert(v, "unexpected body " .. res.body)
        n = tonumber(n)
        assert.are.equal(last + 1, n, "the counter did not carry on: " .. res.body)
        assert.are.equal("1", inits, "init ran again: " .. res.body)
        assert.are.equal(tostring(n), hits, "the table-initialised state was reset: " .. res.body)
        last = n
        return v == version
      end
      for _ = 1, 3 do assert.is_true(hit("v1")) end
      for _, v in ipairs { "v2", "v3", "v4" } do
        local save = v == "v3" and helper.write_file or helper.replace_file
        save(server.app .. "/count.lua", counter_route(v))
        assert.is_truthy(helper.eventually(function() return hit(v) end, 1 * helper.slow),
          v .. " was never served")
      end
      assert.is_true(last > 3)
    end)
  end)

  it("runs moonring.on_reload hooks once, after a successful reload only", function()
    local function ticker_route(gen, hook_extra)
      return helper.DUMP .. string.format([[
local moonring = require "moonring"
local st = moonring.state("ticker", { ticks = {}, hooks = {} })
local GEN = %q
local task = moonring.spawn(function()
  while true do
    st.ticks[GEN] = (st.ticks[GEN] or 0) + 1
    moonring.sleep(0.02)
  end
end)
moonring.on_reload(function()
  st.hooks[GEN] = (st.hooks[GEN] or 0) + 1
  task:cancel()
  %s
end)
return function(req) return { status = 200, body = dump(st) } end
]], gen, hook_extra or "")
    end
    helper.with_server({ files = { ["ticker.lua"] = ticker_route("g1") }, args = { "--watch" } }, function(server)
      local function state() return helper.undump(helper.get(server.port, "/ticker").body) end
      local st = helper.eventually(function()
        local s = state()
        return (s.ticks.g1 or 0) >= 2 and s
      end)
      assert.is_truthy(st, "the top-level task of g1 does not run")

      -- a failed reload replaces nothing: no hook runs, the old task goes on
      save_and_wait_failure(server, "ticker.lua", SYNTAX_ERROR)
      st = state()
      assert.is_nil(st.hooks.g1, "on_reload ran after a failed reload")
      local before = st.ticks.g1
      assert.is_truthy(helper.eventually(function() return state().ticks.g1 > before end),
        "g1's task stopped after a failed reload")

      save_and_wait_reload(server, "ticker.lua", ticker_route("g2", 'error("hook-boom-19c")'))
      st = helper.eventually(function()
        local s = state()
        return s.hooks.g1 == 1 and (s.ticks.g2 or 0) >= 2 and s
      end)
      assert.is_truthy(st, "g1's hook did not run or g2's task does not tick")
      -- the hook cancelled g1's task: its count stays still
      local g1_ticks = state().ticks.g1
      helper.sleep(0.3)
      assert.are.equal(g1_ticks, state().ticks.g1, "g1's task still runs after its on_reload hook")

      -- g2's hook raises: logged, and the reload still counts
      save_and_wait_reload(server, "ticker.lua", ticker_route("g3"), helper.write_file)
      st = helper.eventually(function()
        local s = state()
        return s.hooks.g2 == 1 and (s.ticks.g3 or 0) >= 1 and s
      end)
      assert.is_truthy(st, "g2's hook did not run or g3 is not served")
      assert.are.equal(1, st.hooks.g1, "g1's hook ran more than once")
      assert.is_truthy(server:wait_stderr("hook%-boom%-19c"), "an error in an on_reload hook was not logged")
    end)
  end)

  it("does not grow package.path across reloads", function()
    local function path_route(v)
      return string.format("return function(req) return { status = 200, body = %q .. '\\n' .. package.path } end\n", v)
    end
    helper.with_server({ files = { ["path.lua"] = path_route("v0") }, args = { "--watch" } }, function(server)
      local first = body_of(server.port, "/path")
      local path0 = assert(first:match("^v0\n(.*)$"), first)
      local apps = helper.count(path0, server.app)
      for i = 1, 5 do
        local save = i % 2 == 0 and helper.write_file or helper.replace_file
        save(server.app .. "/path.lua", path_route("v" .. i))
        assert.is_truthy(helper.eventually(function()
          return body_of(server.port, "/path"):match("^v" .. i .. "\n") ~= nil
        end, 1 * helper.slow), "v" .. i .. " never served")
      end
      local path5 = body_of(server.port, "/path"):match("^v5\n(.*)$")
      assert.are.equal(path0, path5)
      assert.are.equal(apps, helper.count(path5, server.app))
    end)
  end)

  it("answers every request of a client loop across 20 reloads, ending on the last version", function()
    local function version(i) return text_route("version " .. i) end
    helper.with_server({ files = { ["v.lua"] = version(0) }, args = { "--watch" } }, function(server)
      local path = server.app .. "/v.lua"
      local reloads_before = server:count_stderr(RELOADED)
      local keep = helper.connect(server.port)
      local failures, requests, newest = {}, 0, 0
      -- one GET, alternately on the kept-alive connection and on a fresh one
      local function one()
        requests = requests + 1
        local res, err
        if requests % 2 == 0 then
          keep:send("GET /v HTTP/1.1\r\nHost: x\r\n\r\n")
          res, err = keep:try_response()
          if not res then keep = helper.connect(server.port) end
        else
          local ok, r = pcall(helper.get, server.port, "/v")
          res, err = ok and r or nil, not ok and r or nil
        end
        if not res then failures[#failures + 1] = "request " .. requests .. ": " .. tostring(err)
        elseif res.status ~= 200 then failures[#failures + 1] = "request " .. requests .. ": " .. res.status .. " " .. res.body
        else
          local n = tonumber(res.body:match("^version (%d+)$"))
          if not n then failures[#failures + 1] = "request " .. requests .. ": body " .. res.body
          elseif n < newest then failures[#failures + 1] = "request " .. requests .. ": version " .. n .. " after " .. newest
          else newest = n end
        end
      end
      for i = 1, 20 do
        if i % 2 == 0 then helper.write_file(path, version(i)) else helper.replace_file(path, version(i)) end
        local deadline = helper.now() + 3 * helper.slow
        repeat one() until newest == i or helper.now() > deadline or #failures > 10
        assert.are.equal(i, newest, "version " .. i .. " was not served in time; failures:\n" .. table.concat(failures, "\n"))
      end
      for _ = 1, 10 do one() end
      keep:close()
      assert.are.equal(0, #failures, #failures .. " of " .. requests .. " requests failed:\n" .. table.concat(failures, "\n"))
      assert.are.equal(20, newest)
      assert.is_true(server:count_stderr(RELOADED) - reloads_before >= 20, server:stderr_text())
    end)
  end)

  it("fails the reload on a broken module a handler requires lazily, and keeps the old code", function()
    local files = {
      ["_lib/lazy.lua"] = 'return { text = "lazy v1" }\n',
      -- required inside the handler only, never at a file's top level
      ["lazy.lua"] = [[
return function(req)
  local lazy = require "_lib.lazy"
  return { status = 200, body = lazy.text }
end
]],
      ["other.lua"] = text_route("other v1"),
    }
    helper.with_server({ files = files, args = { "--watch" } }, function(server)
      assert.are.equal("lazy v1", body_of(server.port, "/lazy"))
      local before = server:count_stderr(RELOADED)
      local text = save_and_wait_failure(server, "_lib/lazy.lua", 'return {\n  text = = "lazy v2"\n}\n',
        helper.replace_file)
      assert.matches("%[error%] reload failed, the previous code keeps serving: [^\n]*_lib/lazy%.lua:2: ",
        last_failure(text))
      assert.are.equal(before, server:count_stderr(RELOADED), "a reload succeeded with a broken module:\n" .. text)
      -- the old code answers every route, the one using the module included
      assert.are.equal("lazy v1", body_of(server.port, "/lazy"))
      assert.are.equal("other v1", body_of(server.port, "/other"))
      helper.sleep(0.2 * helper.slow)
      assert.are.equal("lazy v1", body_of(server.port, "/lazy"))

      save_and_wait_reload(server, "_lib/lazy.lua", 'return { text = "lazy v3" }\n')
      assert.are.equal("lazy v3", body_of(server.port, "/lazy"))
      assert.are.equal("other v1", body_of(server.port, "/other"))
      assert.are.equal(1, server:count_stderr(FAILED), server:stderr_text())
    end)
  end)

  it("does not reload for files that are not .lua, nor for hidden .lua files; a new .lua reloads", function()
    helper.with_server({ files = { ["index.lua"] = text_route("home") }, args = { "--watch" } }, function(server)
      local app = server.app
      local before = server:count_stderr(RELOADED)
      helper.write_file(app .. "/access.log", "line 1\n")
      helper.write_file(app .. "/data.json", '{"a": 1}\n')
      helper.replace_file(app .. "/data.json", '{"a": 2}\n')
      helper.write_file(app .. "/.x.lua", text_route("hidden"))
      helper.write_file(app .. "/.x.lua", text_route("hidden 2"))
      local f = assert(io.open(app .. "/access.log", "ab"))
      for i = 2, 20 do
        f:write("line " .. i .. "\n")
        f:flush()
        helper.sleep(0.02)
      end
      f:close()
      os.remove(app .. "/data.json")
      helper.sleep(1 * helper.slow)
      assert.are.equal(before, server:count_stderr(RELOADED),
        "a file that is not a (visible) .lua file reloaded the app:\n" .. server:stderr_text())
      assert.are.equal(404, helper.get(server.port, "/.x").status)

      save_and_wait_reload(server, "new.lua", text_route("new"), helper.write_file)
      assert.are.equal("new", body_of(server.port, "/new"))
      assert.are.equal("home", body_of(server.port, "/"))
    end)
  end)

  it("watches afresh a directory another one was renamed over", function()
    local files = { ["index.lua"] = text_route("home"), ["sub/page.lua"] = text_route("page v1") }
    helper.with_server({ files = files, args = { "--watch" } }, function(server)
      local app, q = server.app, helper.shell_quote
      assert.are.equal("page v1", body_of(server.port, "/sub/page"))

      -- another directory, with other routes, renamed into sub/'s place at once
      local spare = helper.app { ["sub/page.lua"] = text_route("page v2"), ["sub/extra.lua"] = text_route("extra v2") }
      assert(os.execute(string.format("mv %s %s && mv %s %s",
        q(app .. "/sub"), q(spare .. "/old"), q(spare .. "/sub"), q(app .. "/sub"))))
      wait_answer(server.port, "/sub/page", "page v2", nil, "after renaming a directory over sub/")
      assert.are.equal("extra v2", body_of(server.port, "/sub/extra"))
      -- a later save inside the new directory reloads
      helper.write_file(app .. "/sub/page.lua", text_route("page v3"))
      wait_answer(server.port, "/sub/page", "page v3", nil, "after saving in the renamed-in sub/")
      helper.replace_file(app .. "/sub/extra.lua", text_route("extra v4"))
      wait_answer(server.port, "/sub/extra", "extra v4", nil, "after saving in the renamed-in sub/ again")
      -- the directory renamed away is not watched as part of the app
      local before = server:count_stderr(RELOADED)
      helper.write_file(spare .. "/old/page.lua", text_route("gone"))
      helper.sleep(0.5 * helper.slow)
      assert.are.equal(before, server:count_stderr(RELOADED), server:stderr_text())
      assert.are.equal("page v3", body_of(server.port, "/sub/page"))
      assert.are.equal("home", body_of(server.port, "/"))
      helper.remove(spare)
    end)
  end)

  it("watches afresh a directory removed and made again at once", function()
    local files = { ["index.lua"] = text_route("home"), ["sub/page.lua"] = text_route("page v1") }
    helper.with_server({ files = files, args = { "--watch" } }, function(server)
      local app, q = server.app, helper.shell_quote
      assert.are.equal("page v1", body_of(server.port, "/sub/page"))
      -- (on ext4 the new directory usually gets the inode number of the old)
      assert(os.execute(string.format("rm -rf %s && mkdir %s && printf '%%s' %s > %s",
        q(app .. "/sub"), q(app .. "/sub"), q(text_route("fresh v1")), q(app .. "/sub/fresh.lua"))))
      wait_answer(server.port, "/sub/fresh", "fresh v1", nil, "after making sub/ again")
      assert.are.equal(404, helper.get(server.port, "/sub/page").status)
      helper.sleep(0.1)
      helper.write_file(app .. "/sub/fresh.lua", text_route("fresh v2"))
      wait_answer(server.port, "/sub/fresh", "fresh v2", nil, "after saving in the remade sub/")
      helper.write_file(app .. "/sub/more.lua", text_route("more"))
      wait_answer(server.port, "/sub/more", "more", nil, "after creating a file in the remade sub/")
      assert.are.equal("home", body_of(server.port, "/"))
    end)
  end)

  it("fails a reload whose top level never ends with 'cpu budget exceeded', and keeps serving", function()
    local files = { ["index.lua"] = text_route("home"), ["loop.lua"] = text_route("loop v1") }
    helper.with_server({ files = files, args = { "--watch", "--cpu-budget", "0.2" } }, function(server)
      local started = helper.now()
      local text = save_and_wait_failure(server, "loop.lua", "while true do end\n" .. text_route("never"),
        helper.replace_file)
      assert.matches("cpu budget exceeded", last_failure(text))
      assert.matches("loop%.lua", last_failure(text))
      assert.is_true(helper.now() - started < 3 * helper.slow)
      assert.are.equal("loop v1", body_of(server.port, "/loop"))
      assert.are.equal("home", body_of(server.port, "/"))
      assert.is_nil(server:exit_status())

      save_and_wait_reload(server, "loop.lua", text_route("loop v2"))
      assert.are.equal("loop v2", body_of(server.port, "/loop"))
      assert.are.equal("home", body_of(server.port, "/"))
      assert.are.equal(1, server:count_stderr(FAILED), server:stderr_text())
    end)
  end)

  it("reloads during a steady stream of saves that never pauses (the debounce is capped)", function()
    helper.with_server({ files = { ["s.lua"] = text_route("0") }, args = { "--watch" } }, function(server)
      local before = server:count_stderr(RELOADED)
      local started = helper.now()
      local first, i = nil, 0
      -- a save every ~10 ms for a second: the 25 ms debounce never expires
      while helper.now() - started < 1 do
        i = i + 1
        helper.replace_file(server.app .. "/s.lua", text_route(tostring(i)))
        helper.sleep(0.01)
        if not first and server:count_stderr(RELOADED) > before then first = helper.now() - started end
      end
      local stream_end = helper.now() - started
      local during = server:count_stderr(RELOADED) - before
      assert(first, string.format("no reload during %.2f s of %d saves; stderr:\n%s", stream_end, i,
        server:stderr_text()))
      assert.is_true(first < stream_end)
      assert.is_true(during >= 1)
      wait_answer(server.port, "/s", tostring(i), nil, "after the stream of saves")
    end)
  end)
end)

describe("hot reload with --dev", function()
  it("answers new requests with a 500 naming file and line while the last reload failed", function()
    local files = { ["hello.lua"] = text_route("v1"), ["other.lua"] = text_route("other") }
    helper.with_server({ files = files, args = { "--dev" } }, function(server)
      assert.are.equal("v1", body_of(server.port, "/hello"))
      -- (the log line says what --dev does instead of "the previous code keeps serving")
      local text = save_and_wait_failure(server, "hello.lua", SYNTAX_ERROR, helper.replace_file, "] reload failed")
      assert.matches("%[error%] reload failed[^\n]*hello%.lua:2: ", text)
      for _, p in ipairs { "/hello", "/other" } do
        local res = helper.get(server.port, p)
        assert.are.equal(500, res.status, p .. ": " .. res.raw)
        assert.matches("^text/plain", res.headers["content-type"] or "")
        assert.are.equal("reload failed: ", res.body:sub(1, #"reload failed: "), p .. ": " .. res.body)
        assert.matches("^reload failed: [^\n]*hello%.lua:2: ", res.body)
      end
      helper.write_file(server.app .. "/hello.lua", text_route("v2"))
      wait_answer(server.port, "/hello", "v2", nil, "after fixing hello.lua")
      assert.are.equal("other", body_of(server.port, "/other"))
    end)
  end)
end)

describe("reload on SIGHUP", function()
  it("reloads without --watch, all or nothing", function()
    helper.with_server({ files = { ["hello.lua"] = text_route("v1") } }, function(server)
      helper.replace_file(server.app .. "/hello.lua", text_route("v2"))
      helper.sleep(0.5 * helper.slow)
      assert.are.equal("v1", body_of(server.port, "/hello"), "reloaded without --watch or SIGHUP")

      local reloads = server:count_stderr(RELOADED)
      assert.is_true(server:signal("HUP"))
      assert.is_truthy(server:wait_stderr_count(RELOADED, reloads + 1, 3 * helper.slow), server:stderr_text())
      assert.are.equal("v2", body_of(server.port, "/hello"))

      helper.write_file(server.app .. "/hello.lua", SYNTAX_ERROR)
      local failures = server:count_stderr(FAILED)
      assert.is_true(server:signal("HUP"))
      assert.is_truthy(server:wait_stderr_count(FAILED, failures + 1, 3 * helper.slow), server:stderr_text())
      assert.matches("hello%.lua:2: ", last_failure(server:stderr_text()))
      assert.are.equal("v2", body_of(server.port, "/hello"))
      assert.is_nil(server:exit_status())
    end)
  end)

  it("runs the on_reload hooks a failed attempt's top level registered, at once", function()
    -- a.lua (loaded before b.lua) registers a hook at every load that counts
    -- its runs in state "h"; /a shows the count
    local files = {
      ["a.lua"] = [[
local moonring = require "moonring"
moonring.on_reload(function() local s = moonring.state("h"); s.n = (s.n or 0) + 1 end)
return function(req) return { status = 200, body = "a " .. tostring(moonring.state("h").n or 0) } end
]],
      ["b.lua"] = text_route("b v1"),
    }
    helper.with_server({ files = files }, function(server)
      local function hup_and_wait(needle)
        local before = server:count_stderr(needle)
        assert.is_true(server:signal("HUP"))
        assert.is_truthy(server:wait_stderr_count(needle, before + 1, 3 * helper.slow), server:stderr_text())
      end
      assert.are.equal("a 0", body_of(server.port, "/a"))

      -- attempt 1 fails on b.lua after running a.lua's top level: its hook
      -- runs at once (1); the hook of the serving code (the first load) does not
      helper.write_file(server.app .. "/b.lua", SYNTAX_ERROR)
      hup_and_wait(FAILED)
      assert.are.equal("a 1", body_of(server.port, "/a"))
      assert.are.equal("b v1", body_of(server.port, "/b"))

      -- attempt 2 fails the same way (not logged again): its own hook runs (2)
      assert.is_true(server:signal("HUP"))
      assert.is_truthy(helper.eventually(function() return body_of(server.port, "/a") == "a 2" end,
        2 * helper.slow), "the hook of a second failed attempt did not run: " .. body_of(server.port, "/a"))
      helper.sleep(0.2 * helper.slow)
      assert.are.equal("a 2", body_of(server.port, "/a"))
      assert.are.equal(1, server:count_stderr(FAILED), server:stderr_text())

      -- fixed: attempt 3 succeeds and replaces the first load's code, whose
      -- hook runs now (3); attempt 3's own hook waits
      helper.write_file(server.app .. "/b.lua", text_route("b v2"))
      hup_and_wait(RELOADED)
      assert.are.equal("b v2", body_of(server.port, "/b"))
      assert.are.equal("a 3", body_of(server.port, "/a"))
      helper.sleep(0.2 * helper.slow)
      assert.are.equal("a 3", body_of(server.port, "/a"))

      -- the next successful reload runs attempt 3's hook (4), once
      hup_and_wait(RELOADED)
      assert.are.equal("a 4", body_of(server.port, "/a"))
      helper.sleep(0.2 * helper.slow)
      assert.are.equal("a 4", body_of(server.port, "/a"))
    end)
  end)
end)
