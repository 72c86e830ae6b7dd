-- The values a job may take and give back (moonring.jobs' arguments and
-- results): nil, booleans, finite numbers, strings, and tables that are
-- either arrays (keys 1..n) or records (string keys), nested up to
-- MAX_DEPTH. values.copy checks and copies one (both stores keep copies,
-- never the caller's tables); values.encode/decode turn one into JSON and
-- back for the Redis store (lua-cjson reads; the numbers are written here,
-- since lua-cjson 2.1 keeps at most 14 significant digits).
local cjson = require("cjson").new()

local values = { MAX_DEPTH = 64 }

local null = cjson.null
local fmt, mtype, tointeger = string.format, math.type, math.tointeger

-- The table's kind: "array" (keys exactly 1..n, n >= 1), "record" (string
-- keys only, or empty), or nil and what is wrong with it.
local function table_kind(t)
  local n, strings, others = #t, 0, 0
  for k in pairs(t) do
    if type(k) == "string" then strings = strings + 1
    elseif mtype(k) == "integer" and k >= 1 and k <= n then others = others + 1
    elseif mtype(k) == "integer" and k >= 1 then return nil, "an array with holes"
    else return nil, "a table with the " .. (mtype(k) or type(k)) .. " key " .. tostring(k) end
  end
  if others == 0 then return "record" end
  if strings > 0 then return nil, "a table with both array items and string keys" end
  if others == n then return "array" end
  return nil, "an array with holes"
end

local function copy(v, seen, depth)
  local t = type(v)
  if t == "nil" or t == "boolean" or t == "string" then return v end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then error(fmt("the number %s", v), 0) end
    return v
  end
  if t ~= "table" then error("a " .. t, 0) end
  if seen[v] then error("a table that contains itself", 0) end
  if depth > values.MAX_DEPTH then error("tables nested deeper than " .. values.MAX_DEPTH, 0) end
  local kind, why = table_kind(v)
  if not kind then error(why, 0) end
  seen[v] = true
  local out = {}
  for k, x in pairs(v) do out[k] = copy(x, seen, depth + 1) end
  seen[v] = nil
  return out
end

-- copy(v) → a deep copy of v, or nil and what makes v unstorable (e.g.
-- "a function", "an array with holes").
function values.copy(v)
  local ok, out = pcall(copy, v, {}, 1)
  if not ok then return nil, out end
  return out, nil
end

-- The shortest of %.14g .. %.17g that reads back as the same float.
local function float_text(x)
  for digits = 14, 17 do
    local s = fmt("%." .. digits .. "g", x)
    if tonumber(s) == x then return s end
  end
  return fmt("%.17g", x)
end

-- lua-cjson 2.1 escapes "/" as "\/": valid, but not what people expect.
local function json_string(s)
  return (cjson.encode(s):gsub("\\/", "/"))
end

local function encode(v, out)
  local t = type(v)
  if t == "string" then out[#out + 1] = json_string(v)
  elseif t == "number" then out[#out + 1] = mtype(v) == "integer" and fmt("%d", v) or float_text(v)
  elseif t == "boolean" then out[#out + 1] = v and "true" or "false"
  elseif t == "nil" then out[#out + 1] = "null"
  elseif #v > 0 then                       -- an array (checked by copy)
    out[#out + 1] = "["
    for i = 1, #v do
      if i > 1 then out[#out + 1] = "," end
      encode(v[i], out)
    end
    out[#out + 1] = "]"
  else
    out[#out + 1] = "{"
    local first = true
    for k, x in pairs(v) do
      if not first then out[#out + 1] = "," end
      first = false
      out[#out + 1] = json_string(k)
      out[#out + 1] = ":"
      encode(x, out)
    end
    out[#out + 1] = "}"
  end
end

-- encode(v) → JSON text of a value values.copy accepts, or nil, why.
function values.encode(v)
  local ok, why = pcall(copy, v, {}, 1)
  if not ok then return nil, why end
  local out = {}
  encode(v, out)
  return table.concat(out)
end

-- JSON numbers are all floats to lua-cjson: whole ones within 2^53 come
-- back as integers; null becomes nil.
local function restore(v)
  if v == null then return nil end
  local t = type(v)
  if t == "number" then
    if mtype(v) == "float" and v >= -2^53 and v <= 2^53 then return tointeger(v) or v end
    return v
  end
  if t == "table" then
    for k, x in pairs(v) do v[k] = restore(x) end
  end
  return v
end

-- decode(text) → the value, or nil, why (text that is not JSON).
function values.decode(text)
  local ok, v = pcall(cjson.decode, text)
  if not ok then return nil, "bad JSON: " .. tostring(v) end
  return restore(v), nil
end

return values
