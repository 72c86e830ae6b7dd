-- Loads the APP into one handler: a directory of route files (DESIGN 4.1)
-- or a single Lua file that returns a handler. Each route becomes one
-- handler (a method table becomes a dispatcher that answers 405 itself),
-- wrapped by the _middleware.lua files of its directory and those above it,
-- outermost first. Load errors are raised as "file:line: message" strings;
-- nothing half-loaded is ever served.
local core = require "moonring.core"
local router = require "moonring.router"
local handler = require "moonring.handler"
local is_async, call = handler.is_async, handler.call

local app = {}
local current = {}            -- the loaded routes, for moonring.routes()

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
        scan(dir .. "/" .. e.name, prefix .. e.name .. "/", out)
      elseif e.name:match("%.lua$") then
        out[#out + 1] = prefix .. e.name
      end
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

local function not_found() return text(404, "Not Found\n") end

-- `exact` maps paths of routes without parameters to their entries: most
-- requests are answered by that one lookup.
local function dispatcher(match, exact)
  return function(req)
    local uri = req.uri
    local entry = exact[uri] or match(uri, req.params)
    if not entry then return not_found() end
    req.route = entry.pattern
    if entry.async then return call(entry.handler, req) end
    return entry.handler(req)
  end
end

local function describe(entry)
  return { path = entry.pattern, file = entry.file, methods = entry.method_list }
end

-- load(path) → handler. Raises "file:line: message" on any load error.
function app.load(path)
  local kind, err = core.stat(path)
  if not kind then error(err, 0) end
  if kind == "file" then
    local entry = load_file(path, path)
    entry.pattern = "/*"
    entry.async = is_async(entry.handler)
    current = { describe(entry) }
    return dispatcher(function() return entry end, {})
  end
  local dir = path:gsub("/+$", "")
  if dir == "" then dir = "/" end
  package.path = dir .. "/?.lua;" .. package.path
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
  current = list
  return dispatcher(function(uri, params) return r:match(uri, params) end, r.exact)
end

function app.routes()
  local copy = {}
  for i, e in ipairs(current) do
    copy[i] = { path = e.path, file = e.file, methods = e.methods }
  end
  return copy
end

return app
