-- moonring.static{ root = "public", prefix = "/", index = "index.html",
-- max_age = nil, precompressed = true, fallthrough = true, types = {} }:
-- middleware serving the files under `root` (relative to the app's
-- directory unless absolute) for GET and HEAD requests whose path starts
-- with `prefix`; anything else, and a path with no file, goes on to the
-- wrapped handler (the routes). As nginx's static module:
--   - the body is moonring.file: sendfile(2), never through Lua strings;
--   - Content-Type by extension, ETag ("mtime-size" in hex, as nginx's) and
--     Last-Modified; If-None-Match / If-Modified-Since → 304;
--   - one Range (bytes=a-b, a-, -n) → 206 with Content-Range, unsatisfiable
--     → 416; several ranges get the whole file (RFC 9110 allows it);
--     If-Range is honoured;
--   - a .br or .gz sibling (style.css.br) is sent instead, with
--     Content-Encoding and Vary: Accept-Encoding, when the client accepts it;
--   - a directory gets its index file; "/dir" is redirected to "/dir/".
-- Safety: the file is opened beneath root by the kernel (core.dir:
-- openat2 RESOLVE_BENEATH), so neither "..", an encoded one, nor a symlink
-- leading out of root ever opens a file outside it; a path with "..",
-- "%2f", "\" or NUL is answered 404 before that.
local core = require "moonring.core"
local handler = require "moonring.handler"
local is_async = handler.is_async

local TYPES = {
  html = "text/html; charset=utf-8", htm = "text/html; charset=utf-8",
  css = "text/css; charset=utf-8", js = "text/javascript; charset=utf-8",
  mjs = "text/javascript; charset=utf-8", json = "application/json",
  map = "application/json", txt = "text/plain; charset=utf-8",
  md = "text/markdown; charset=utf-8", csv = "text/csv; charset=utf-8",
  xml = "application/xml", svg = "image/svg+xml", ico = "image/x-icon",
  png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg", gif = "image/gif",
  webp = "image/webp", avif = "image/avif", bmp = "image/bmp",
  woff = "font/woff", woff2 = "font/woff2", ttf = "font/ttf", otf = "font/otf",
  pdf = "application/pdf", zip = "application/zip", gz = "application/gzip",
  wasm = "application/wasm", mp4 = "video/mp4", webm = "video/webm",
  mp3 = "audio/mpeg", ogg = "audio/ogg", wav = "audio/wav",
  webmanifest = "application/manifest+json", txz = "application/x-xz",
}
local DEFAULT_TYPE = "application/octet-stream"

local function misuse(msg) error("moonring.static: " .. msg, 3) end

-- The request path below the prefix, decoded, or nil when it must be 404:
-- an invalid escape, an encoded "/", a "\" or NUL, a "." or ".." segment.
local function decode_path(raw)
  if raw:find("%", 1, true) then
    if raw:find("%%[^%x]") or raw:find("%%%x[^%x]") or raw:find("%%%x?$") then return nil end
    if raw:find("%%2[fF]") or raw:find("%%5[cC]") or raw:find("%%00") then return nil end
    raw = raw:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  end
  if raw:find("[\\%z]") then return nil end
  for seg in raw:gmatch("[^/]+") do
    if seg == ".." or seg == "." then return nil end
  end
  return raw
end

-- HTTP dates (RFC 9110 IMF-fixdate), formatted once per mtime.
local date_cache, date_cached = {}, 0
local function http_date(t)
  local s = date_cache[t]
  if s then return s end
  s = os.date("!%a, %d %b %Y %H:%M:%S GMT", t)
  if date_cached >= 1024 then date_cache, date_cached = {}, 0 end
  date_cache[t], date_cached = s, date_cached + 1
  return s
end

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6,
                 Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- "Sun, 06 Nov 1994 08:49:37 GMT" → seconds since the epoch, or nil.
local function parse_date(s)
  local d, mon, y, h, mi, sec = s:match("^%a+, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  local m = MONTHS[mon]
  if not m then return nil end
  y, m, d = tonumber(y), m, tonumber(d)
  -- days from 1970-01-01 (Howard Hinnant's days_from_civil)
  if m <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec)
end

-- If-None-Match: "*", or a list of (weak or strong) tags, compared weakly.
local function etag_matches(header, etag)
  if header:match("^%s*%*%s*$") then return true end
  for tag in header:gmatch('W?/?"[^"]*"') do
    if tag:gsub("^W/", "") == etag then return true end
  end
  return false
end

-- Whether Accept-Encoding allows `coding` (present, and not q=0).
local function accepts(ae, coding)
  for item in ae:gmatch("[^,]+") do
    local name, params = item:match("^%s*([%w%-%*]+)%s*(.*)$")
    if name and name:lower() == coding then
      local q = params:match("[qQ]%s*=%s*([%d.]+)")
      return not q or tonumber(q) ~= 0
    end
  end
  return false
end

-- A single Range → first, last (inclusive), or false when unsatisfiable,
-- or nil when the header is to be ignored (not bytes, several ranges,
-- malformed).
local function parse_range(h, size)
  local a, b = h:match("^%s*bytes%s*=%s*(%d*)%s*%-%s*(%d*)%s*$")
  if not a or (a == "" and b == "") then return nil end
  if a == "" then                            -- the last b bytes
    local n = tonumber(b)
    if n == 0 or size == 0 then return false end
    if n > size then n = size end
    return size - n, size - 1
  end
  local first, last = tonumber(a), b ~= "" and tonumber(b) or size - 1
  if b ~= "" and last < first then return nil end
  if first >= size then return false end
  if last >= size then last = size - 1 end
  return first, last
end

local function text(status, body, headers)
  headers = headers or {}
  headers["content-type"] = "text/plain; charset=utf-8"
  return { status = status, headers = headers, body = body }
end

local NOT_FOUND = "Not Found\n"

return function(opts)
  if opts ~= nil and type(opts) ~= "table" then misuse("expected an options table, got " .. type(opts)) end
  opts = opts or {}
  local root = opts.root or "public"
  if type(root) ~= "string" or root == "" then misuse("root must be a directory path") end
  if root:sub(1, 1) ~= "/" then
    local app_root = require("moonring.app").root()
    if app_root then root = app_root .. "/" .. root end
  end
  local prefix = opts.prefix or "/"
  if type(prefix) ~= "string" or prefix:sub(1, 1) ~= "/" then misuse("prefix must start with /") end
  if prefix:sub(-1) ~= "/" then prefix = prefix .. "/" end
  local index = opts.index == nil and "index.html" or opts.index
  if index ~= false and type(index) ~= "string" then misuse("index must be a file name or false") end
  local max_age = opts.max_age
  if max_age ~= nil and (math.type(max_age) ~= "integer" or max_age < 0) then
    misuse("max_age must be an integer number of seconds >= 0")
  end
  local cache_control = max_age and "public, max-age=" .. max_age
  local precompressed = opts.precompressed ~= false
  local fallthrough = opts.fallthrough ~= false
  local types = setmetatable({}, { __index = TYPES })
  for ext, t in pairs(opts.types or {}) do types[ext:lower()] = t end

  local dir, err = core.dir(root)
  if not dir then misuse("root " .. err) end
  local plen = #prefix

  -- The file response for req, a 404 to answer at once, or nil (go on).
  local function serve(req)
    local method = req.request_method
    if method ~= "GET" and method ~= "HEAD" then return nil end
    local uri = req.uri
    local rel
    if plen == 1 then
      rel = uri:sub(2)
    elseif uri:sub(1, plen) == prefix then
      rel = uri:sub(plen + 1)
    elseif uri .. "/" == prefix then
      rel = ""
    else
      return nil
    end
    rel = decode_path(rel)
    if not rel then return text(404, NOT_FOUND) end
    local f, kind
    f, err, kind = dir:open(rel == "" and "." or rel)
    if kind == "directory" then
      if not index then return nil end
      if uri:sub(-1) ~= "/" then
        local q = req.query_string
        return { status = 301, headers = { location = uri .. "/" .. (q and "?" .. q or "") }, body = "" }
      end
      rel = rel .. index
      f = dir:open(rel)
    end
    if not f then
      if fallthrough then return nil end
      return text(404, NOT_FOUND)
    end
    local headers = req.headers
    local ctype = types[(rel:match("%.([%w]+)$") or ""):lower()] or DEFAULT_TYPE
    local encoding
    local ae = precompressed and headers["accept-encoding"]
    if ae then
      for _, c in ipairs({ { "br", ".br" }, { "gzip", ".gz" } }) do
        if accepts(ae, c[1]) then
          local z = dir:open(rel .. c[2])
          if z then
            f:close()
            f, encoding = z, c[1]
            break
          end
        end
      end
    end
    local size, mtime = f:stat()
    local etag = string.format('"%x-%x"', mtime, size)
    local last_modified = http_date(mtime)
    local h = { ["content-type"] = ctype, etag = etag, ["last-modified"] = last_modified,
                ["accept-ranges"] = "bytes", ["cache-control"] = cache_control }
    if encoding then
      h["content-encoding"] = encoding
      h.vary = "Accept-Encoding"
    end
    local inm, ims = headers["if-none-match"], headers["if-modified-since"]
    if (inm and etag_matches(inm, etag)) or (not inm and ims and (parse_date(ims) or -1) >= mtime) then
      f:close()
      h["content-type"], h["accept-ranges"] = nil, nil
      return { status = 304, headers = h }
    end
    local range = headers.range
    if range and method == "GET" then
      local if_range = headers["if-range"]
      if not if_range or if_range == etag or if_range == last_modified then
        local first, last = parse_range(range, size)
        if first == false then
          f:close()
          return text(416, "Range Not Satisfiable\n", { ["content-range"] = "bytes */" .. size })
        elseif first then
          f:range(first, last - first + 1)
          h["content-range"] = "bytes " .. first .. "-" .. last .. "/" .. size
          return { status = 206, headers = h, body = f }
        end
      end
    end
    return { status = 200, headers = h, body = f }
  end

  return function(inner)
    if is_async(inner) then
      return function(req, respond, raise)
        local res = serve(req)
        if res then return respond(res) end
        return inner(req, respond, raise)
      end
    end
    return function(req)
      local res = serve(req)
      if res then return res end
      return inner(req)
    end
  end
end
