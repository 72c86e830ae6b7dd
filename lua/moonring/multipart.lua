-- multipart/form-data for moonring.params, parsed as the body streams in:
-- each req.body:read() chunk is scanned for the boundary, text fields go to
-- req.form (at most max_form bytes in all), file parts to temporary files
-- (at most max_file bytes each, max_files of them) listed in req.files.
-- This module owns those files: it creates them (mode 0600, random names
-- under tmpdir) and removes them in req.on_close, which runs once the
-- request ends however it ends (answered, raised, client gone, deadline).
-- Files are written with io (one open handle per part, a chunk at a time):
-- writes of a chunk to a local temporary file land in the page cache and
-- take microseconds, where moonring.fs.write would open and close the file
-- through the thread pool for every chunk.
local core = require "moonring.core"
local params = require "moonring.params"

local plain, add = params.plain, params.add

local M = {}

local MAX_HEADERS = 8 * 1024       -- bytes of one part's header block

-- An error that ends the parse with a response (caught in M.parse).
local Reject = {}
local function reject(status, text)
  error(setmetatable({ status = status, text = text }, Reject), 0)
end

-- 16 random hex digits from /dev/urandom (kept open: one read per file).
local urandom
local function random_hex()
  if not urandom then urandom = assert(io.open("/dev/urandom", "rb")) end
  return (urandom:read(8):gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function default_tmpdir()
  local d = os.getenv("TMPDIR")
  if d == nil or d == "" then d = "/tmp" end
  return d
end

-- boundary=... from the content type's parameters, quoted or not.
local function boundary_of(rest)
  local b = rest:match("[;%s][Bb][Oo][Uu][Nn][Dd][Aa][Rr][Yy]%s*=%s*\"([^\"]*)\"")
      or rest:match("[;%s][Bb][Oo][Uu][Nn][Dd][Aa][Rr][Yy]%s*=%s*([^;%s]+)")
  if not b or #b == 0 or #b > 70 then return nil end
  return b
end

-- `form-data; name="a"; filename="b.txt"` → "form-data", { name =, filename = }.
-- Quoted values may hold ";" and backslash-escaped quotes.
local function disposition(value)
  local kind, pos = value:match("^%s*([^;%s]+)()")
  if not kind then return nil end
  local p = {}
  while true do
    local key, at = value:match("^%s*;%s*([^=;%s]+)%s*=%s*()", pos)
    if not key then break end
    local v
    if value:sub(at, at) == '"' then
      local out, i = {}, at + 1
      while true do
        local c = value:sub(i, i)
        if c == "" then return nil end            -- unterminated quote
        if c == '"' then break end
        if c == "\\" and i < #value then i = i + 1; c = value:sub(i, i) end
        out[#out + 1] = c
        i = i + 1
      end
      v, pos = table.concat(out), i + 1
    else
      v, pos = value:match("^([^;]*)()", at)
      v = v:match("^(.-)%s*$")
    end
    p[key:lower()] = v
  end
  return kind:lower(), p
end

-- The header block of one part → { ["content-disposition"] = ..., ... }.
local function part_headers(block)
  local h = {}
  for line in block:gmatch("([^\r\n]+)") do
    local name, value = line:match("^([^:%s]+)%s*:%s*(.-)%s*$")
    if not name then reject(400, "Bad Request: multipart: bad part header line") end
    h[name:lower()] = value
  end
  return h
end

-- One parse: the state of the body scan and what it has collected.
local Parser = {}
Parser.__index = Parser

-- A new part begins with this header block.
function Parser:start_part(block)
  local h = part_headers(block)
  local kind, p = disposition(h["content-disposition"] or "")
  if kind ~= "form-data" or not p.name then
    reject(400, "Bad Request: multipart: a part without Content-Disposition: form-data; name=...")
  end
  self.name = p.name
  if p.filename == nil then
    self.text, self.file = {}, nil
    return
  end
  self.text = nil
  if p.filename == "" then                     -- a file input left empty: skipped
    self.file, self.skip = nil, true
    return
  end
  self.nfiles = self.nfiles + 1
  if self.nfiles > self.cfg.max_files then
    reject(413, "Payload Too Large: more than " .. self.cfg.max_files .. " files")
  end
  local path = self.tmpdir .. "/moonring-upload-" .. random_hex()
  self.paths[#self.paths + 1] = path             -- removed in on_close, even half-written
  local ok, err = core.fs_write(path, "", { mode = 384 })   -- 0600
  if not ok then error("moonring.params: cannot create a temporary file: " .. tostring(err), 0) end
  local f, ferr = io.open(path, "r+b")
  if not f then error("moonring.params: cannot open a temporary file: " .. tostring(ferr), 0) end
  self.handle = f
  self.file = {
    filename = p.filename,
    content_type = h["content-type"] or "application/octet-stream",
    path = path,
    size = 0,
  }
end

-- Bytes of the current part's content.
function Parser:content(s)
  if #s == 0 or self.skip then return end
  if self.text then
    self.text_bytes = self.text_bytes + #s
    if self.text_bytes > self.cfg.max_form then
      reject(413, "Payload Too Large: form fields over " .. self.cfg.max_form .. " bytes")
    end
    self.text[#self.text + 1] = s
  else
    local file = self.file
    file.size = file.size + #s
    if file.size > self.cfg.max_file then
      reject(413, "Payload Too Large: file " .. string.format("%q", self.name)
        .. " over " .. self.cfg.max_file .. " bytes")
    end
    local ok, err = self.handle:write(s)
    if not ok then error("moonring.params: writing an upload: " .. tostring(err), 0) end
  end
end

-- A file table under name; from the second one on, an array of them.
function Parser:add_file(name, file)
  local files, n = self.req.files, (self.seen[name] or 0) + 1
  self.seen[name] = n
  if n == 1 then files[name] = file
  elseif n == 2 then files[name] = { files[name], file }
  else files[name][n] = file end
end

-- The current part is complete.
function Parser:end_part()
  if self.text then
    add(self.req.form, self.name, table.concat(self.text))
  elseif self.file then
    local ok, err = self.handle:close()
    self.handle = nil
    if not ok then error("moonring.params: closing an upload: " .. tostring(err), 0) end
    self:add_file(self.name, self.file)
  end
  self.text, self.file, self.skip, self.name = nil, nil, nil, nil
end

-- Scans buf from pos as far as it can. Returns the new position, or nil once
-- the closing delimiter was seen.
function Parser:scan(buf, pos)
  local delim = self.delim
  while true do
    local state = self.state
    if state == "preamble" or state == "body" then
      local at = buf:find(delim, pos, true)
      if not at then
        local keep = #buf - #delim + 1          -- a delimiter may start in the last bytes
        if keep > pos then
          if state == "body" then self:content(buf:sub(pos, keep - 1)) end
          pos = keep
        end
        return pos
      end
      if state == "body" then
        self:content(buf:sub(pos, at - 1))
        self:end_part()
      end
      pos, self.state = at + #delim, "delimiter"
    elseif state == "delimiter" then           -- after "--boundary": "--", or CRLF
      if #buf - pos + 1 < 2 then return pos end
      if buf:sub(pos, pos + 1) == "--" then return nil end
      local eol = buf:find("\r\n", pos, true)
      if not eol then
        if #buf - pos > 256 then reject(400, "Bad Request: multipart: bad delimiter line") end
        return pos
      end
      if buf:sub(pos, eol - 1):find("[^ \t]") then
        reject(400, "Bad Request: multipart: bad delimiter line")
      end
      pos, self.state = eol + 2, "headers"
    else                                       -- "headers"
      local block
      if buf:sub(pos, pos + 1) == "\r\n" then
        block, pos = "", pos + 2
      else
        local e = buf:find("\r\n\r\n", pos, true)
        if not e then
          if #buf - pos + 1 > MAX_HEADERS then
            reject(400, "Bad Request: multipart: part headers over " .. MAX_HEADERS .. " bytes")
          end
          return pos
        end
        if e - pos > MAX_HEADERS then
          reject(400, "Bad Request: multipart: part headers over " .. MAX_HEADERS .. " bytes")
        end
        block, pos = buf:sub(pos, e - 1), e + 4
      end
      self:start_part(block)
      self.state = "body"
    end
  end
end

-- Reads the body chunk by chunk through the scanner. Only the unscanned
-- tail (less than a delimiter, or a header block) is kept between reads.
function Parser:run()
  local buf, pos = "\r\n", 1                   -- so the first delimiter needs no special case
  while true do
    local chunk, err = self.req.body:read()
    if chunk == nil then
      if err then error(err, 0) end            -- "cancelled" / "closed": the client left
      reject(400, "Bad Request: multipart: body ends before the closing boundary")
    end
    buf = pos > #buf and chunk or (buf:sub(pos) .. chunk)
    pos = self:scan(buf, 1)
    if pos == nil then break end
  end
  -- The epilogue after the closing delimiter is read and dropped.
  while true do
    local chunk, err = self.req.body:read()
    if chunk == nil then
      if err then error(err, 0) end
      break
    end
  end
end

-- Removes the request's temporary files (from req.on_close).
local function remove_all(paths)
  for i = 1, #paths do os.remove(paths[i]) end
end

-- parse(req, rest of the content type, cfg) → nil when req.form and
-- req.files are filled, or a 4xx response. Raises "cancelled" if the
-- client leaves meanwhile (its files are removed all the same).
function M.parse(req, ct_rest, cfg)
  local boundary = boundary_of(" " .. (ct_rest or ""))
  if not boundary then
    return plain(400, "Bad Request: multipart/form-data without a valid boundary")
  end
  local self = setmetatable({
    req = req, cfg = cfg, delim = "\r\n--" .. boundary, state = "preamble",
    tmpdir = cfg.tmpdir or default_tmpdir(),
    paths = {}, nfiles = 0, text_bytes = 0, seen = {},
  }, Parser)
  local paths = self.paths
  req.on_close(function() remove_all(paths) end)
  local ok, err = xpcall(Parser.run, core.note, self)
  if self.handle then self.handle:close(); self.handle = nil end
  if ok then return nil end
  if getmetatable(err) == Reject then
    return plain(err.status, err.text)
  end
  error(err, 0)
end

return M
