-- Handlers of both shapes (DESIGN 4.4): sync function(req) → response, and
-- async function(req, respond, raise). call() runs either shape in either
-- style; middleware{} builds middleware that wraps either shape and keeps it.
-- An async handler called sync-style parks the calling task until respond or
-- raise is called, from wherever that happens.
local core = require "moonring.core"
local promise, note, cancelled = core.promise, core.note, core.cancelled

local M = {}

local shapes = setmetatable({}, { __mode = "k" })

-- true for function(req, respond, raise): declared with three parameters.
-- Anything else callable is sync.
local function is_async(h)
  local s = shapes[h]
  if s == nil then
    s = debug.getinfo(h, "u").nparams == 3
    shapes[h] = s
  end
  return s
end
M.is_async = is_async

-- call(h, req) → the response (an async h is waited for; an error, thrown
-- or raised, is raised here). call(h, req, respond, raise) → delivers the
-- response through respond, an error through raise.
function M.call(h, req, respond, raise)
  if type(h) ~= "function" then
    error("moonring.call: the handler must be a function, got " .. type(h), 2)
  end
  if respond == nil then
    if not is_async(h) then return h(req) end
    local resp, rais, wait = promise()
    h(req, resp, rais)
    return wait()
  end
  if is_async(h) then
    h(req, respond, raise)
    return
  end
  local ok, res = xpcall(h, note, req)
  if ok then return respond(res) end
  if cancelled(res) then error(res, 0) end
  raise(res)
end

-- The request function may answer at once: it returns the request to pass
-- on (nil: the same) and, to answer without calling the handler, a response.
local function before(on_request, req)
  local req2, early = on_request(req)
  if req2 == nil then req2 = req end
  return req2, early
end

-- middleware{ request = f, response = g, error = h } → function(handler)
--   f(req) → req (or nil), [response]    before the handler
--   g(res, req) → res (or nil)           after it, on its response
--   h(err, req) → response, or nil to let the error go on
-- The wrapped handler has the shape of the one it wraps.
function M.middleware(spec)
  if type(spec) ~= "table" then error("moonring.middleware: expected a table", 2) end
  local on_request, on_response, on_error = spec.request, spec.response, spec.error
  return function(handler)
    if is_async(handler) then
      return function(req, respond, raise)
        if on_request then
          local early
          req, early = before(on_request, req)
          if early ~= nil then return respond(early) end
        end
        local function answer(res)
          if on_response then
            local ok, r = xpcall(on_response, note, res, req)
            if not ok then return raise(r) end
            if r ~= nil then res = r end
          end
          respond(res)
        end
        local function fail(err)
          if on_error and not cancelled(err) then
            local ok, res = xpcall(on_error, note, err, req)
            if not ok then return raise(res) end
            if res ~= nil then return answer(res) end
          end
          raise(err)
        end
        local ok, err = xpcall(handler, note, req, answer, fail)
        if not ok then
          if cancelled(err) then error(err, 0) end
          fail(err)
        end
      end
    end
    return function(req)
      if on_request then
        local early
        req, early = before(on_request, req)
        if early ~= nil then return early end
      end
      local res
      if on_error then
        local ok, r = xpcall(handler, note, req)
        if ok then
          res = r
        elseif cancelled(r) then
          error(r, 0)
        else
          res = on_error(r, req)
          if res == nil then error(r, 0) end
        end
      else
        res = handler(req)
      end
      if on_response then
        local r = on_response(res, req)
        if r ~= nil then res = r end
      end
      return res
    end
  end
end

return M
