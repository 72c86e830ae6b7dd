-- moonring.cors{ origins, methods, headers, expose, credentials, max_age }:
-- Cross-Origin Resource Sharing as middleware. A preflight (OPTIONS with
-- Origin and Access-Control-Request-Method) is answered here, before the
-- route, so a method table's 405 never sees it: 204 with the allow headers,
-- or 403 with a short reason when the origin, method or a header is not
-- allowed. Other requests go to the route; an allowed origin's response
-- gets Access-Control-Allow-Origin (and -Credentials, -Expose-Headers).
-- Responses are copied before they are changed, never changed in place.
local handler = require "moonring.handler"

local DEFAULT_METHODS = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE" }
local DEFAULT_MAX_AGE = 600

local function fail(msg) error("moonring.cors: " .. msg, 4) end

-- A list option → { "A", ... } (each checked), or nil when absent.
local function string_list(opts, name, upper)
  local v = opts[name]
  if v == nil then return nil end
  if type(v) ~= "table" then fail(name .. " must be a list of strings, got " .. type(v)) end
  local out = {}
  for i, s in ipairs(v) do
    if type(s) ~= "string" or not s:match("^[!#$%%&'*+%-.^_`|~%w]+$") then
      fail(name .. "[" .. i .. "] must be a token (a method or header name), got " .. tostring(s))
    end
    out[i] = upper and s:upper() or s:lower()
  end
  return out
end

local function set_of(list)
  local s = {}
  for _, x in ipairs(list) do s[x] = true end
  return s
end

-- origins option → function(origin, req) → bool, and whether it is "*".
local function origin_test(origins)
  if origins == "*" then return function() return true end, true end
  if type(origins) == "function" then
    return function(origin, req) return origins(origin, req) == true end, false
  end
  if type(origins) ~= "table" then
    fail('origins must be a list of origins, "*" or a function(origin, req), got ' .. tostring(origins))
  end
  local allowed = {}
  for i, o in ipairs(origins) do
    if type(o) ~= "string" or o == "*" or o:find("[%s%c/]$") then
      fail("origins[" .. i .. "] must be an origin like \"https://example.com\" (no path, no "
        .. "trailing slash), got " .. tostring(o))
    end
    allowed[o:lower()] = true
  end
  return function(origin) return allowed[origin:lower()] == true end, false
end

-- headers[vary] with `token` added unless it is there already (or *).
local function add_vary(headers, token)
  local key, current
  for k, v in pairs(headers) do
    if type(k) == "string" and k:lower() == "vary" then key, current = k, v end
  end
  if type(current) == "table" then current = table.concat(current, ", ") end
  if current == nil or current == "" then
    headers[key or "vary"] = token
    return
  end
  local have = {}
  for t in current:gmatch("[^,%s]+") do have[t:lower()] = true end
  if have["*"] then headers[key] = current return end
  local add = {}
  for t in token:gmatch("[^,%s]+") do
    if not have[t:lower()] then add[#add + 1] = t end
  end
  headers[key] = #add == 0 and current or (current .. ", " .. table.concat(add, ", "))
end

local function copy_response(res)
  local out = {}
  for k, v in pairs(res) do out[k] = v end
  local h = {}
  for k, v in pairs(res.headers or {}) do h[k] = v end
  out.headers = h
  return out
end

local function forbidden(why)
  return {
    status = 403,
    headers = { ["content-type"] = "text/plain; charset=utf-8",
                vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers" },
    body = "Forbidden: CORS " .. why .. "\n",
  }
end

local function split_tokens(s)
  local out = {}
  for t in s:gmatch("[^,%s]+") do out[#out + 1] = t:lower() end
  return out
end

return function(opts)
  if type(opts) ~= "table" then
    error("moonring.cors: expected an options table with at least origins, got " .. type(opts), 2)
  end
  local allowed, any = origin_test(opts.origins)
  local methods = string_list(opts, "methods", true) or DEFAULT_METHODS
  local method_set = set_of(methods)
  local allow_methods = table.concat(methods, ", ")
  local headers = string_list(opts, "headers", false)
  local header_set = headers and set_of(headers)
  local allow_headers = headers and table.concat(headers, ", ")
  local expose = string_list(opts, "expose", false)
  local expose_headers = expose and #expose > 0 and table.concat(expose, ", ") or nil
  local credentials = opts.credentials
  if credentials ~= nil and type(credentials) ~= "boolean" then
    error("moonring.cors: credentials must be a boolean, got " .. type(credentials), 2)
  end
  local max_age = opts.max_age
  if max_age == nil then max_age = DEFAULT_MAX_AGE end
  if max_age ~= false and (math.type(max_age) ~= "integer" or max_age < 0) then
    error("moonring.cors: max_age must be a whole number of seconds >= 0 or false, got "
      .. tostring(max_age), 2)
  end
  max_age = max_age and tostring(max_age) or nil
  -- "*" is sent only when the answer is the same for every origin.
  local star = any and not credentials

  local function allow_origin(h, origin)
    h["access-control-allow-origin"] = star and "*" or origin
    if credentials then h["access-control-allow-credentials"] = "true" end
  end

  local function preflight(req, origin, method)
    if not allowed(origin, req) then return forbidden("origin not allowed: " .. origin) end
    if not method_set[method:upper()] then return forbidden("method not allowed: " .. method) end
    local h = { vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers" }
    allow_origin(h, origin)
    h["access-control-allow-methods"] = allow_methods
    local asked = req.headers["access-control-request-headers"]
    if asked and asked:find("%S") then
      if header_set then
        for _, name in ipairs(split_tokens(asked)) do
          if not header_set[name] then return forbidden("header not allowed: " .. name) end
        end
        h["access-control-allow-headers"] = allow_headers
      else
        h["access-control-allow-headers"] = table.concat(split_tokens(asked), ", ")
      end
    end
    if max_age then h["access-control-max-age"] = max_age end
    return { status = 204, headers = h }
  end

  return handler.middleware {
    request = function(req)
      local origin = req.headers.origin
      local method = req.headers["access-control-request-method"]
      if origin and method and req.request_method == "OPTIONS" then
        return req, preflight(req, origin, method)
      end
      return req
    end,
    response = function(res, req)
      if type(res) ~= "table" then return res end
      local origin = req.headers.origin
      local ok = origin and allowed(origin, req)
      if star and not ok then return res end        -- the same for everyone: no Vary
      res = copy_response(res)
      local h = res.headers
      if ok then
        allow_origin(h, origin)
        if expose_headers then h["access-control-expose-headers"] = expose_headers end
      end
      if not star then add_vary(h, "Origin") end
      return res
    end,
  }
end
