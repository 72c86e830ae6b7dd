-- Loads the APP into one handler: a directory of route files (DESIGN 4.1)
-- or a single Lua file that returns a handler. Each route becomes one
-- handler (a method table becomes a dispatcher that answers 405 itself),
-- wrapped by the _middleware.lua files of its directory and those above it,
-- outermost first. Load errors are raised as "file:line: message" strings;
-- nothing half-loaded is ever served.
--
-- Reload (DESIGN 4.7): app.reload() loads the whole app again as one
-- transaction. The app's own modules (files under APP found by `require`)
-- are found by a package.searchers entry that records them, so a reload
-- drops exactly those from package.loaded; if anything fails, they are put
-- back as they were and the running code stays.
local core = require "moonring.core"
local router = require "moonring.router"
local handler = require "moonring.handler"
local is_async, call = handler.is_async, handler.call

local app = {}
local current = {}            -- the loaded routes, for moonring.routes()
local app_path                -- APP as given
local root                    -- where the app's modules live: APP, or a file APP's directory
local modules = {}            -- name → file of each app module required since the last load
local hooks = {}              -- on_reload functions of the running code
local pending                 -- on_reload functions of the code being loaded (nil: none)
local last_error              -- the failure last logged (a repeat is not logged again)
local generation = 0          -- bumped when a reload starts (see app.generation)

local METHOD_ORDER = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" }

local function text(status, body, headers)
  headers = headers or {}
  headers["content-type"] = "text/plain; charset=utf-8"
  return { status = status, headers = headers, body = body }
end

-- A handler is function(req) (sync) or function(req, respond, raise) (async).
local function check_handler(h, file, what)
  if type(h) ~= "function" then
    error(file .. ": " .. what .. " must be a function, got " .. type(h), 0)
  end
  local info = debug.getinfo(h, "uS")
  local where = info.short_src .. ":" .. (info.linedefined or 0)
  if info.what == "C" then return end
  if info.nparams == 1 or info.nparams == 3 then return end
  error(where .. ": " .. what .. " must be function(req) or function(req, respond, raise), "
    .. "this one takes " .. info.nparams .. " parameters", 0)
end

-- One handler for a method table: the method's handler, or 405 with Allow.
local function method_dispatch(methods, allow)
  return function(req)
    local h = methods[req.request_method]
    if not h then return text(405, "Method Not Allowed\n", { allow = allow }) end
    if is_async(h) then return call(h, req) end
    return h(req)
  end
end

-- The route file's value → { handler = f, methods = {...}, allow = "..." }
local function route_entry(value, file)
  if type(value) == "table" and getmetatable(value) == nil then
    local methods, allowed = {}, {}
    for method, h in pairs(value) do
      if type(method) ~= "string" or method ~= method:upper() then
        error(file .. ": a method table's keys must be upper-case method names, got " .. tostring(method), 0)
      end
      check_handler(h, file, "handler for " .. method)
      methods[method] = h
    end
    if methods.GET and not methods.HEAD then methods.HEAD = methods.GET end
    for _, m in ipairs(METHOD_ORDER) do
      if methods[m] then allowed[#allowed + 1] = m end
    end
    local extra = {}
    for m in pairs(methods) do
      local known = false
      for _, k in ipairs(METHOD_ORDER) do known = known or k == m end
      if not known then extra[#extra + 1] = m end
    end
    table.sort(extra)
    for _, m in ipairs(extra) do allowed[#allowed + 1] = m end
    if #allowed == 0 then error(file .. ": the method table is empty", 0) end
    local allow = table.concat(allowed, ", ")
    return { file = file, handler = method_dispatch(methods, allow), methods = methods,
             allow = allow, method_list = allowed }
  end
  check_handler(value, file, "the route's value")
  return { file = file, handler = value }
end

local function run_file(path, what)
  local chunk, err = loadfile(path)
  if not chunk then error(err, 0) end
  local ok, value = pcall(chunk)
  if not ok then error(tostring(value), 0) end
  if value == nil then error(path .. ": the file returned nothing; expected " .. what, 0) end
  return value
end

local function load_file(path, file)
  return route_entry(run_file(path, "a handler"), file)
end

-- Route files: *.lua not starting with "_" or "." (those are free for
-- middleware and app modules), in directories not starting with either.
-- Directories with a _middleware.lua are listed in out.middleware.
local function scan(dir, prefix, out)
  local entries, err = core.listdir(dir)
  if not entries then error(err, 0) end
  table.sort(entries, function(a, b) return a.name < b.name end)
  for _, e in ipairs(entries) do
    local first = e.name:sub(1, 1)
    if e.name == "_middleware.lua" and e.type == "file" then
      out.middleware[prefix] = true
    elseif first ~= "_" and first ~= "." then
      if e.type == "directory" then
        -- public/ at the top holds static files (moonring.static), never routes
        if prefix == "" and e.name == "public" then goto continue end
        scan(dir .. "/" .. e.name, prefix .. e.name .. "/", out)
      elseif e.name:match("%.lua$") then
        out[#out + 1] = prefix .. e.name
      end
      ::continue::
    end
  end
  return out
end

-- Wraps entry.handler in the middleware of the route's directory and of
-- every directory above it; the top one ends up outermost.
local function wrap(entry, file, dir, middleware)
  local prefixes = { "" }
  for p in file:gmatch("(.-/)") do prefixes[#prefixes + 1] = prefixes[#prefixes] .. p end
  local h = entry.handler
  for i = #prefixes, 1, -1 do
    local prefix = prefixes[i]
    if middleware[prefix] then
      local mw_file = prefix .. "_middleware.lua"
      local mw = middleware[prefix]
      if mw == true then
        mw = run_file(dir .. "/" .. mw_file, "function(handler) return handler end")
        if type(mw) ~= "function" then
          error(mw_file .. ": must return function(handler) → handler, got " .. type(mw), 0)
        end
        middleware[prefix] = mw
      end
      local ok, wrapped = pcall(mw, h)
      if not ok then error(mw_file .. ": " .. tostring(wrapped), 0) end
      check_handler(wrapped, mw_file, "what the middleware returned for " .. file)
      h = wrapped
    end
  end
  entry.handler = h
end

local function not_found(req) return text(404, "Not Found\n") end

-- A path no route matches still passes through the middleware of the
-- directories it names (so moonring.static, CORS or a logger in a
-- _middleware.lua see it too): not_found wrapped by the chain of each
-- directory with middleware, deepest first. Directories named [param] are
-- skipped (their parent's chain applies).
local function fallbacks(dir, middleware)
  local list = {}
  for prefix in pairs(middleware) do
    if not prefix:find("[", 1, true) then
      local entry = { handler = not_found }
      wrap(entry, prefix .. "(no route)", dir, middleware)
      list[#list + 1] = { uri = "/" .. prefix, handler = entry.handler,
                          async = is_async(entry.handler) }
    end
  end
  table.sort(list, function(a, b) return #a.uri > #b.uri end)
  return list
end

-- `exact` maps paths of routes without parameters to their entries: most
-- requests are answered by that one lookup.
local function dispatcher(match, exact, unmatched)
  unmatched = unmatched or {}
  return function(req)
    local uri = req.uri
    local entry = exact[uri] or match(uri, req.params)
    if not entry then
      for _, fb in ipairs(unmatched) do
        if uri:sub(1, #fb.uri) == fb.uri or uri .. "/" == fb.uri then
          if fb.async then return call(fb.handler, req) end
          return fb.handler(req)
        end
      end
      return not_found()
    end
    req.route = entry.pattern
    if entry.async then return call(entry.handler, req) end
    return entry.handler(req)
  end
end

local function describe(entry)
  return { path = entry.pattern, file = entry.file, methods = entry.method_list }
end

-- The package.searchers entry for app modules: `require "_lib.x"` finds
-- ROOT/_lib/x.lua (or ROOT/_lib/x/init.lua) and remembers it.
local function app_searcher(name)
  if not root then return nil end
  local rel = name:gsub("%.", "/")
  local tried = {}
  for _, form in ipairs({ "%s/%s.lua", "%s/%s/init.lua" }) do
    local file = form:format(root, rel)
    if core.stat(file) == "file" then
      local chunk, err = loadfile(file)
      if not chunk then error(err, 0) end     -- "file:line: message", as route files
      modules[name] = file
      return chunk, file
    end
    tried[#tried + 1] = "\n\tno file '" .. file .. "'"
  end
  return table.concat(tried)
end
table.insert(package.searchers, 2, app_searcher)

-- build(path) → handler, route list. Raises "file:line: message" on any
-- load error; changes nothing the running code sees.
local function build(path)
  local kind, err = core.stat(path)
  if not kind then error(err, 0) end
  if kind == "file" then
    local entry = load_file(path, path)
    entry.pattern = "/*"
    entry.async = is_async(entry.handler)
    return dispatcher(function() return entry end, {}), { describe(entry) }
  end
  local dir = path:gsub("/+$", "")
  if dir == "" then dir = "/" end
  local r = router.new()
  local files = scan(dir, "", { middleware = {} })
  for _, file in ipairs(files) do
    local entry = load_file(dir .. "/" .. file, file)
    wrap(entry, file, dir, files.middleware)
    entry.async = is_async(entry.handler)
    r:add(file, entry)
  end
  local list = {}
  for _, entry in ipairs(r.list) do list[#list + 1] = describe(entry) end
  table.sort(list, function(a, b) return a.path < b.path end)
  return dispatcher(function(uri, params) return r:match(uri, params) end, r.exact,
                    fallbacks(dir, files.middleware)), list
end

-- load(path) → handler: the first load. Raises "file:line: message".
function app.load(path)
  app_path = path
  if core.stat(path) == "file" then
    root = path:match("^(.*)/[^/]*$") or "."
  else
    root = path:gsub("/+$", "")
    if root == "" then root = "/" end
  end
  pending = {}
  local ok, h, list = pcall(build, path)
  hooks, pending = pending, nil
  if not ok then error(h, 0) end
  current = list
  return h
end

-- With --dev, while a reload has failed, new requests see the error.
local function failed_app(msg)
  local body = "reload failed: " .. msg .. "\n\nThe previous code is still loaded and the "
    .. "requests it started go on; fix the file and save.\n"
  return function() return text(500, body) end
end

local to_run = {}              -- hooks finish_reload runs next

local function message(err)
  local ok, msg = pcall(tostring, err)
  return ok and type(msg) == "string" and msg or "(an error object that is not a string)"
end

-- reload() → the new handler, or nil (keep the running one); the outcome
-- is logged. All or nothing: routes, middleware and the app's entries in
-- package.loaded change together, or not at all. Modules the old code
-- required later (inside a handler) are required again inside the
-- transaction too, so an error in one of them fails the reload now rather
-- than a request later.
function app.reload()
  generation = generation + 1
  local started = core.now()
  local saved = {}
  for name in pairs(modules) do
    saved[name] = package.loaded[name]
    package.loaded[name] = nil
  end
  local old_modules = modules
  modules, pending = {}, {}
  local ok, h, list = pcall(function()
    local handler, routes = build(app_path)
    for name, file in pairs(old_modules) do
      if package.loaded[name] == nil and core.stat(file) == "file" then require(name) end
    end
    return handler, routes
  end)
  local new_hooks = pending
  pending = nil
  if not ok then
    for name in pairs(modules) do package.loaded[name] = nil end
    for name, value in pairs(saved) do package.loaded[name] = value end
    modules = old_modules
    -- What the failed attempt's top level started is stopped by its own
    -- hooks: the old code "replaces" it.
    to_run = new_hooks
    local msg = message(h)
    if msg ~= last_error then
      last_error = msg
      core.log_error((core.dev and "reload failed (until it is fixed, responses show this error): "
        or "reload failed, the previous code keeps serving: ") .. msg)
    end
    if core.dev then return failed_app(msg) end
    return nil
  end
  last_error = nil
  current = list
  to_run, hooks = hooks, new_hooks
  core.log_info(string.format("reloaded %s: %d route%s in %.1f ms", app_path, #list,
    #list == 1 and "" or "s", (core.now() - started) * 1000))
  return h
end

-- After reload() and once the new handler is in place: the on_reload hooks
-- of the code that was replaced, each protected.
function app.finish_reload()
  local list = to_run
  to_run = {}
  for _, fn in ipairs(list) do
    local ok, err = pcall(fn)
    if not ok then core.log_error("on_reload hook failed: " .. message(err)) end
  end
end

-- on_reload(fn): fn runs once, after a later reload has replaced the code
-- that registered it.
function app.on_reload(fn)
  local list = pending or hooks
  list[#list + 1] = fn
end

-- root() → the app's directory: APP, or a file APP's directory (nil
-- before the first load).
function app.root() return root end

-- generation() → a number that changes when a reload starts, before the new
-- code loads: a cache of files under APP (templates) compares it to know
-- when to start afresh.
function app.generation() return generation end

function app.routes()
  local copy = {}
  for i, e in ipairs(current) do
    copy[i] = { path = e.path, file = e.file, methods = e.methods }
  end
  return copy
end

return app
