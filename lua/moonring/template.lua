-- moonring.template: HTML templates compiled to Lua functions (issue 10,
-- item 9). `<%= expr %>` writes expr HTML-escaped, `<%- expr %>` writes it
-- raw, `<% code %>` runs Lua statements, `-%>` drops the newline after a tag,
-- `<%%` writes a literal `<%`. One load() per template: line N of the
-- template is line N of the generated chunk, so syntax and runtime errors
-- read "file:line: message" with the template's own file and line.
--
-- render/html/include read files under the app's root directory and cache
-- the compiled function per file; the cache starts afresh when the app
-- reloads (app.generation), and with --dev a file whose text changed is
-- compiled again at once. The cache is this module's: nothing else owns it.
local template = {}

local MAX_DEPTH = 32          -- nested include() calls before we call it a cycle

---------------------------------------------------------------------------
-- Escaping and the names a template sees
---------------------------------------------------------------------------

local ESCAPES = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }

-- escape(v) → v as text with & < > " ' escaped; nil is "".
local function escape(v)
  if v == nil then return "" end
  if type(v) ~= "string" then v = tostring(v) end
  return (v:gsub("[&<>\"']", ESCAPES))
end
template.escape = escape

-- raw(v) → v as text, unescaped; nil is "".
local function raw(v)
  if v == nil then return "" end
  if type(v) ~= "string" then return tostring(v) end
  return v
end

-- What every template sees besides its env: pure functions only (no io,
-- os.execute, require or load), so a template cannot do more than its
-- handler passes it.
local BASE = {
  string = string, table = table, math = math, utf8 = utf8,
  os = { date = os.date, time = os.time, clock = os.clock },
  pairs = pairs, ipairs = ipairs, next = next, select = select, type = type,
  tostring = tostring, tonumber = tonumber, error = error, assert = assert,
  pcall = pcall, rawget = rawget, rawequal = rawequal, rawlen = rawlen,
  getmetatable = getmetatable, setmetatable = setmetatable, unpack = table.unpack,
  escape = escape,
}

---------------------------------------------------------------------------
-- Compiling: template text → Lua source → function
---------------------------------------------------------------------------

-- A Lua string literal on one line: control characters, quotes and
-- backslashes as decimal escapes, so no newline of the text reaches the chunk.
local function quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return ("\\%03d"):format(c:byte()) end) .. '"'
end

-- The end of the long bracket opened at `i` with `eq` equals signs, or nil.
local function long_close(code, i, eq)
  local _, stop = code:find("]" .. eq .. "]", i, true)
  return stop
end

-- true when Lua code ends inside a `--` line comment: what we append after
-- it must then start on a new line.
local function ends_in_comment(code)
  local i = 1
  while true do
    local at = code:find("[-\"'%[]", i)
    if not at then return false end
    local c = code:sub(at, at)
    if c == "-" then
      if code:sub(at + 1, at + 1) ~= "-" then
        i = at + 1
      else
        local eq = code:match("^%[(=*)%[", at + 2)
        if eq then
          local stop = long_close(code, at + 2, eq)
          if not stop then return false end   -- unfinished: load() will say so
          i = stop + 1
        else
          local nl = code:find("\n", at, true)
          if not nl then return true end
          i = nl + 1
        end
      end
    elseif c == "[" then
      local eq = code:match("^%[(=*)%[", at)
      if eq then
        local stop = long_close(code, at, eq)
        if not stop then return false end
        i = stop + 1
      else
        i = at + 1
      end
    else                                         -- a short string
      local j = at + 1
      while true do
        local k = code:find("[\\\n" .. c .. "]", j)
        if not k then return false end
        local d = code:sub(k, k)
        if d == "\\" then j = k + 2 else i = k + 1 break end
      end
    end
  end
end

-- The chunk's first line, before the template's first line. The chunk
-- returns the render function; `_mr_` names keep clear of the template's.
local PRELUDE = "local _mr_esc, _mr_raw, _mr_concat = ... "
  .. "return function(_ENV) local _mr_out, _mr_n = {}, 0 "
local EPILOGUE = "\nreturn _mr_concat(_mr_out, '', 1, _mr_n) end"

-- A chunk being written: pieces, and the chunk line its end is on.
local function writer()
  local w = { parts = { PRELUDE }, line = 1 }
  function w.put(s) w.parts[#w.parts + 1] = s end
  -- pad(line): the next piece starts on the template's line `line` (when
  -- a forced newline put the chunk ahead, it catches up at the next one).
  function w.pad(line)
    if w.line < line then
      w.put(("\n"):rep(line - w.line))
      w.line = line
    end
  end
  -- code(s): template code copied as is; its newlines are the template's.
  function w.code(s, line)
    w.pad(line)
    w.put(s)
    local _, n = s:gsub("\n", "")
    w.line = w.line + n
    if ends_in_comment(s) then
      w.put("\n")
      w.line = w.line + 1
    else
      w.put(" ")
    end
  end
  return w
end

-- Splits `source` and writes the chunk. Tags: <%= %> <%- %> <% %>, any
-- closed by -%> to drop the newline right after it. `name` is for errors.
local function translate(source, name)
  local w = writer()
  local pos, line = 1, 1
  local function advance(to)         -- moves pos to `to`, counting lines
    local _, n = source:sub(pos, to - 1):gsub("\n", "")
    line = line + n
    pos = to
  end
  local text = {}                    -- literal text waiting to be written
  local function flush()
    if #text > 0 then
      w.put("_mr_n = _mr_n + 1 _mr_out[_mr_n] = " .. quote(table.concat(text)) .. " ")
      text = {}
    end
  end
  while true do
    local open = source:find("<%", pos, true)
    if not open then
      text[#text + 1] = source:sub(pos)
      break
    end
    text[#text + 1] = source:sub(pos, open - 1)
    advance(open)
    local kind = source:sub(open + 2, open + 2)
    if kind == "%" then                                  -- <%% → <%
      text[#text + 1] = "<%"
      advance(open + 3)
    else
      local body_at = (kind == "=" or kind == "-") and open + 3 or open + 2
      local close = source:find("%>", body_at, true)
      if not close then
        error(("%s:%d: a <%% tag is not closed by %%>"):format(name, line), 0)
      end
      local body = source:sub(body_at, close - 1)
      local trim = body:sub(-1) == "-"
      if trim then body = body:sub(1, -2) end
      flush()
      local tag_line = line
      advance(close + 2)
      if kind == "=" or kind == "-" then
        if not body:find("%S") then
          error(("%s:%d: an empty <%%%s %%> tag"):format(name, tag_line, kind), 0)
        end
        w.code("_mr_n = _mr_n + 1 _mr_out[_mr_n] = " .. (kind == "=" and "_mr_esc(" or "_mr_raw(")
          .. body .. (ends_in_comment(body) and "\n)" or ")"), tag_line)
      else
        w.code(body, tag_line)
      end
      if trim then
        local nl = source:match("^\r?\n", pos)
        if nl then advance(pos + #nl) end
      end
    end
  end
  flush()
  w.put(EPILOGUE)
  return table.concat(w.parts)
end

-- compile_named(source, name) → fn(scope) → string; raises "name:line: msg".
local function compile_named(source, name)
  local lua = translate(source, name)
  local chunk, err = load(lua, "@" .. name, "t", {})
  if not chunk then
    -- a block left open in the template reaches the chunk's own `end`
    err = err:gsub("%(to close 'function' at line 1%) near <eof>$",
      "at the end of the template (a block opened in <%% %%> is not closed)")
    error(err, 0)
  end
  return chunk(escape, raw, table.concat)
end

---------------------------------------------------------------------------
-- Rendering: env → scope, files, the cache
---------------------------------------------------------------------------

local render_file            -- defined below; include() needs it

-- scope(env, depth) → the _ENV of one render: env's fields, then BASE,
-- and include(path [, env]) rendering another template (default: this env).
local function scope(env, depth)
  local s = {}
  s.include = function(path, env2)
    if env2 == nil then env2 = env end
    local out = render_file(path, env2, depth + 1)   -- not a tail call: error levels count this frame
    return out
  end
  return setmetatable(s, {
    __index = function(_, k)
      local v = env[k]
      if v == nil then v = BASE[k] end
      return v
    end,
  })
end

local function check_env(env, who)
  if env == nil then return {} end
  if type(env) ~= "table" then
    error(who .. ": env must be a table, got " .. type(env), 0)
  end
  return env
end

-- compile(source [, name]) → fn(env) → string. `name` (default "template")
-- is what errors name. Raises "name:line: message" on a syntax error.
function template.compile(source, name)
  if type(source) ~= "string" then
    error("moonring.template.compile: source must be a string, got " .. type(source), 0)
  end
  if name ~= nil and type(name) ~= "string" then
    error("moonring.template.compile: name must be a string, got " .. type(name), 0)
  end
  local fn = compile_named(source, name or "template")
  return function(env)
    return fn(scope(check_env(env, "template"), 0))
  end
end

-- The server's side, found lazily so compile() works in plain Lua too.
local app, dev
local function server()
  if app == nil then
    local ok, mod = pcall(require, "moonring.app")
    app = ok and mod or false
    local okc, core = pcall(require, "moonring.core")
    dev = okc and core.dev or false
  end
  return app
end

local cache = {}             -- full path → { fn =, source = }
local cached_generation      -- app.generation() the cache was filled under

local function read(full)
  local f, err = io.open(full, "rb")
  if not f then return nil, err end
  local source, rerr = f:read("a")
  f:close()
  if not source then return nil, full .. ": " .. tostring(rerr) end
  return source
end

-- load_file(path, level) → fn(scope), from the cache or compiled now.
-- Errors are raised at `level`: 0 for render/html (their caller is often a
-- tail call, whose position would mislead), the template's line for include.
local function load_file(path, level)
  if type(path) ~= "string" or path == "" or path:find("\0", 1, true) then
    error("moonring.template: the template path must be a non-empty string, got "
      .. (type(path) == "string" and ("%q"):format(path) or type(path)), level)
  end
  local a = server()
  local full = path
  if path:sub(1, 1) ~= "/" then
    local root = a and a.root()
    if not root then
      error("moonring.template: no app root to find '" .. path .. "' in (outside the server?)", level)
    end
    full = root .. "/" .. path
  end
  local generation = a and a.generation()
  if generation ~= cached_generation then
    cache, cached_generation = {}, generation
  end
  local entry = cache[full]
  if entry and not dev then return entry.fn end
  local source, err = read(full)
  if not source then
    error("moonring.template: cannot read template '" .. path .. "': " .. err, level)
  end
  if entry and entry.source == source then return entry.fn end
  entry = { fn = compile_named(source, path), source = source }
  cache[full] = entry
  return entry.fn
end

function render_file(path, env, depth)
  if depth > MAX_DEPTH then
    error("moonring.template: include nested more than " .. MAX_DEPTH
      .. " deep (does '" .. tostring(path) .. "' include itself?)", 3)
  end
  local fn = load_file(path, 4)
  if type(env) ~= "table" then
    error("moonring.template: include's env must be a table, got " .. type(env), 3)
  end
  return fn(scope(env, depth))
end

-- render(path, env) → string: the template at `path`, relative to the
-- app's root directory (an absolute path is used as is).
function template.render(path, env)
  local fn = load_file(path, 0)
  return fn(scope(check_env(env, "moonring.template.render"), 0))
end

-- html(path, env [, status]) → a text/html response of the rendered page.
function template.html(path, env, status)
  if status ~= nil and (math.type(status) ~= "integer" or status < 100 or status > 599) then
    error("moonring.template.html: status must be an integer from 100 to 599, got " .. tostring(status), 0)
  end
  local fn = load_file(path, 0)
  return {
    status = status or 200,
    headers = { ["content-type"] = "text/html; charset=utf-8" },
    body = fn(scope(check_env(env, "moonring.template.html"), 0)),
  }
end

return template
