-- Loads the APP into one handler: a directory of route files (DESIGN 4.1)
-- or a single Lua file that returns a handler. Load errors are raised as
-- "file:line: message" strings; nothing half-loaded is ever served.
local core = require "moonring.core"
local router = require "moonring.router"

local app = {}
local current = {}            -- the loaded routes, for moonring.routes()

local METHOD_ORDER = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" }

local function text(status, body, headers)
  headers = headers or {}
  headers["content-type"] = "text/plain; charset=utf-8"
  return { status = status, headers = headers, body = body }
end

-- A handler must be function(req); async function(req, respond, raise) comes later.
local function check_handler(h, file, what)
  if type(h) ~= "function" then
    error(file .. ": " .. what .. " must be a function, got " .. type(h), 0)
  end
  local info = debug.getinfo(h, "uS")
  local where = info.short_src .. ":" .. (info.linedefined or 0)
  if info.what == "C" then return end
  if info.nparams == 1 then return end
  if info.nparams == 3 then
    error(where .. ": async handlers function(req, respond, raise) are not supported yet; use function(req)", 0)
  end
  error(where .. ": " .. what .. " must be function(req), this one takes " .. info.nparams .. " parameters", 0)
end

-- The route file's value → { handler = f } or { methods = {...}, allow = "..." }
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
    return { file = file, methods = methods, allow = table.concat(allowed, ", "), method_list = allowed }
  end
  check_handler(value, file, "the route's value")
  return { file = file, handler = value }
end

local function load_file(path, file)
  local chunk, err = loadfile(path)
  if not chunk then error(err, 0) end
  local ok, value = pcall(chunk)
  if not ok then error(tostring(value), 0) end
  if value == nil then error(path .. ": the file returned nothing; expected a handler", 0) end
  return route_entry(value, file)
end

-- Route files: *.lua not starting with "_" or "." (those are free for
-- middleware and app modules), in directories not starting with either.
local function scan(dir, prefix, out)
  local entries, err = core.listdir(dir)
  if not entries then error(err, 0) end
  table.sort(entries, function(a, b) return a.name < b.name end)
  for _, e in ipairs(entries) do
    local first = e.name:sub(1, 1)
    if first ~= "_" and first ~= "." then
      if e.type == "directory" then
        scan(dir .. "/" .. e.name, prefix .. e.name .. "/", out)
      elseif e.name:match("%.lua$") then
        out[#out + 1] = prefix .. e.name
      end
    end
  end
  return out
end

-- `exact` maps paths of routes without parameters to their entries: most
-- requests are answered by that one lookup.
local function dispatcher(match, exact)
  local not_found = function() return text(404, "Not Found\n") end
  return function(req)
    local uri = req.uri
    local entry = exact[uri] or match(uri, req.params)
    if not entry then return not_found() end
    req.route = entry.pattern
    local h = entry.handler
    if not h then
      h = entry.methods[req.request_method]
      if not h then
        return text(405, "Method Not Allowed\n", { allow = entry.allow })
      end
    end
    return h(req)
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
    current = { describe(entry) }
    return dispatcher(function() return entry end, {})
  end
  local dir = path:gsub("/+$", "")
  if dir == "" then dir = "/" end
  package.path = dir .. "/?.lua;" .. package.path
  local r = router.new()
  for _, file in ipairs(scan(dir, "", {})) do
    r:add(file, load_file(dir .. "/" .. file, file))
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
