-- File routes (DESIGN 4.1): maps relative file names to URL patterns and
-- matches request paths against them. Pure Lua, no I/O: app.lua feeds it.
--   index.lua → /   hello.lua → /hello   users/[id].lua → /users/:id
--   files/[...rest].lua → /files/*rest (one or more segments)
-- Static segments win over parameters, parameters over rest segments.
local router = {}
router.__index = router

local function new_node()
  return { static = {} }
end

function router.new()
  return setmetatable({ root = new_node(), exact = {}, list = {} }, router)
end

-- "users/[id].lua" → { "users", {param = "id"} }, "/users/:id"
function router.parse(file)
  local segs, shown = {}, {}
  local path = file:gsub("%.lua$", "")
  local parts = {}
  for part in path:gmatch("[^/]+") do parts[#parts + 1] = part end
  if parts[#parts] == "index" then parts[#parts] = nil end
  for i, part in ipairs(parts) do
    local rest = part:match("^%[%.%.%.([%w_]+)%]$")
    local param = part:match("^%[([%w_]+)%]$")
    if rest then
      if i ~= #parts then return nil, "a [..." .. rest .. "] segment must be last" end
      segs[#segs + 1] = { rest = rest }
      shown[#shown + 1] = "*" .. rest
    elseif param then
      segs[#segs + 1] = { param = param }
      shown[#shown + 1] = ":" .. param
    elseif part:find("[%[%]]") then
      return nil, "bad route segment '" .. part .. "' (expected [name] or [...name])"
    else
      segs[#segs + 1] = part
      shown[#shown + 1] = part
    end
  end
  return segs, "/" .. table.concat(shown, "/")
end

-- Adds `entry` (a table with at least .file) for `file`; raises on a clash.
function router:add(file, entry)
  local segs, pattern = router.parse(file)
  if not segs then error(file .. ": " .. pattern, 0) end
  entry.pattern = pattern
  local node = self.root
  for _, seg in ipairs(segs) do
    if type(seg) == "string" then
      node.static[seg] = node.static[seg] or new_node()
      node = node.static[seg]
    elseif seg.param then
      if node.param and node.param_name ~= seg.param then
        error(file .. ": parameter [" .. seg.param .. "] clashes with [" .. node.param_name .. "] of another route", 0)
      end
      node.param = node.param or new_node()
      node.param_name = seg.param
      node = node.param
    else
      if node.rest then error(file .. ": clashes with " .. node.rest.file, 0) end
      node.rest, node.rest_name = entry, seg.rest
      self.list[#self.list + 1] = entry
      return entry
    end
  end
  if node.entry then error(file .. ": clashes with " .. node.entry.file .. " (both are " .. pattern .. ")", 0) end
  node.entry = entry
  if not pattern:find("[:*]") then self.exact[pattern] = entry end
  self.list[#self.list + 1] = entry
  return entry
end

local function decode(s)
  if not s:find("%", 1, true) then return s end
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function walk(node, segs, i, params)
  local seg = segs[i]
  if seg == nil then return node.entry end
  local child = node.static[seg]
  if child then
    local e = walk(child, segs, i + 1, params)
    if e then return e end
  end
  if node.param then
    local e = walk(node.param, segs, i + 1, params)
    if e then
      params[node.param_name] = seg
      return e
    end
  end
  if node.rest then
    params[node.rest_name] = table.concat(segs, "/", i)
    return node.rest
  end
  return nil
end

-- Finds the entry for a request path, filling `params` (a table) with the
-- decoded path parameters. Empty segments are ignored ("/a//b/" is "/a/b").
function router:match(path, params)
  local e = self.exact[path]
  if e then return e end
  local segs = {}
  for seg in path:gmatch("[^/]+") do segs[#segs + 1] = decode(seg) end
  return walk(self.root, segs, 1, params)
end

return router
