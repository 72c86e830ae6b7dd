-- moonring.defaults.site{...} and moonring.defaults.api{...}: the batteries
-- stacked in a sensible order, in the spirit of ring-defaults' site-defaults
-- and api-defaults, so one line in an app's top _middleware.lua gives a
-- browser app or an API what it needs in its first hour:
--
--   -- _middleware.lua
--   return require("moonring").defaults.site{ secret = os.getenv("SESSION_SECRET") }
--
-- Each entry of the options table configures one middleware (its options
-- table, as the middleware itself takes it), or turns it off with false.
-- The stack, outermost first (a request passes down it, the response back
-- up):
--   site: proxy_headers (only when given) → security_headers → static →
--         charset → etag → cookies → params → session → csrf → handler
--   api:  proxy_headers (only when given) → cors (only when given) →
--         security_headers (nosniff only) → charset → etag → params →
--         json_body → handler
-- Static files come early, so a file never touches the session. Params
-- come before csrf, which reads the form's token field. The stack is a
-- plain list: defaults.stack(list) composes any other.
local helpers = require "moonring.helpers"

local M = {}

-- level: 3 names the caller of the function calling misuse (site, api,
-- stack), 4 the caller of site/api from their helpers pick and check.
local function misuse(msg, level) error("moonring.defaults: " .. msg, level or 3) end

-- stack{ mw1, mw2, ... } → one middleware: mw1 outermost.
function M.stack(list)
  if type(list) ~= "table" then misuse("stack expects a list of middleware") end
  for i, mw in ipairs(list) do
    if type(mw) ~= "function" then misuse("stack: item " .. i .. " is a " .. type(mw) .. ", expected middleware") end
  end
  return function(handler)
    for i = #list, 1, -1 do handler = list[i](handler) end
    return handler
  end
end

-- opts[name]: false → nil (off); nil → the default options (or nil when the
-- middleware is off by default); a table → those options.
local function pick(opts, name, default)
  local v = opts[name]
  if v == false then return nil end
  if v == nil then return default end
  if type(v) ~= "table" then misuse(name .. " must be an options table or false, got " .. type(v), 4) end
  return v
end

local function check(opts, known, what)
  if opts ~= nil and type(opts) ~= "table" then misuse(what .. " expects an options table, got " .. type(opts), 4) end
  opts = opts or {}
  for k in pairs(opts) do
    if not known[k] then misuse(what .. ": unknown option " .. tostring(k), 4) end
  end
  return opts
end

-- Whether the app has the public/ directory static{} serves by default.
local function has_public()
  local root = require("moonring.app").root()
  return root ~= nil and require("moonring.core").stat(root .. "/public") == "directory"
end

local SITE = { static = true, security = true, charset = true, etag = true, cookies = true,
               params = true, session = true, csrf = true, proxy = true, secret = true }

-- site{ secret =, static =, security =, charset =, etag =, cookies =,
-- params =, session =, csrf =, proxy = } → middleware. A session needs a
-- secret (`secret`, or session.secret); session = false turns sessions off,
-- and csrf with them (its tokens live in the session).
function M.site(opts)
  opts = check(opts, SITE, "site")
  local list = {}
  local proxy = pick(opts, "proxy", nil)
  if proxy then list[#list + 1] = helpers.proxy_headers(proxy) end
  local security = pick(opts, "security", {})
  if security then list[#list + 1] = helpers.security_headers(security) end
  local static = pick(opts, "static", {})
  if static and opts.static == nil and not has_public() then static = nil end   -- no public/: no files
  if static then list[#list + 1] = require("moonring.static")(static) end
  local charset = pick(opts, "charset", {})
  if charset then list[#list + 1] = helpers.charset(charset) end
  local etag = pick(opts, "etag", {})
  if etag then list[#list + 1] = helpers.etag(etag) end
  local cookies = pick(opts, "cookies", {})
  if cookies then list[#list + 1] = require("moonring.cookies")(cookies) end
  local params = pick(opts, "params", {})
  if params then list[#list + 1] = require("moonring.params")(params) end
  local session = pick(opts, "session", {})
  if session then
    local s = {}
    for k, v in pairs(session) do s[k] = v end
    if s.secret == nil then s.secret = opts.secret end
    if s.secret == nil then
      misuse("site: a session needs a secret (site{ secret = ... }, e.g. from an environment "
        .. "variable), or session = false")
    end
    list[#list + 1] = require("moonring.session")(s)
    local csrf = pick(opts, "csrf", {})
    if csrf then list[#list + 1] = require("moonring.csrf")(csrf) end
  elseif opts.csrf then
    misuse("site: csrf needs the session (its tokens live there)")
  end
  return M.stack(list)
end

local API = { cors = true, security = true, charset = true, etag = true, params = true,
              json_body = true, proxy = true }

-- api{ cors =, security =, charset =, etag =, params =, json_body =,
-- proxy = } → middleware. CORS is on only when given (its origins have no
-- safe default); json_body accepts form bodies too (strict = false), so
-- params and JSON live side by side.
function M.api(opts)
  opts = check(opts, API, "api")
  local list = {}
  local proxy = pick(opts, "proxy", nil)
  if proxy then list[#list + 1] = helpers.proxy_headers(proxy) end
  local cors = pick(opts, "cors", nil)
  if cors then list[#list + 1] = require("moonring.cors")(cors) end
  local security = pick(opts, "security", { frame_options = false, referrer_policy = false })
  if security then list[#list + 1] = helpers.security_headers(security) end
  local charset = pick(opts, "charset", {})
  if charset then list[#list + 1] = helpers.charset(charset) end
  local etag = pick(opts, "etag", {})
  if etag then list[#list + 1] = helpers.etag(etag) end
  local params = pick(opts, "params", {})
  if params then list[#list + 1] = require("moonring.params")(params) end
  local json_body = pick(opts, "json_body", { strict = false })
  if json_body then list[#list + 1] = require("moonring.json").json_body(json_body) end
  return M.stack(list)
end

return M
