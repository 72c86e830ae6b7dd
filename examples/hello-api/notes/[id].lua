-- /notes/:id — a [param] route: req.params.id is the path segment, a string.
local api = require "_lib.api"

local function find(req)
  local id = tonumber(req.params.id)
  local note = id and api.notes[id]
  if not note then return nil, api.error(404, "no note " .. req.params.id) end
  return note
end

return {
  GET = function(req)
    local note, missing = find(req)
    if not note then return missing end
    return api.json(200, note)
  end,

  PUT = function(req)
    local note, missing = find(req)
    if not note then return missing end
    local input, bad = api.read_json(req)
    if not input then return bad end
    if type(input.text) ~= "string" or input.text == "" then
      return api.error(422, "field 'text' (a non-empty string) is required")
    end
    note.text = input.text
    return api.json(200, note)
  end,

  DELETE = function(req)
    local note, missing = find(req)
    if not note then return missing end
    api.notes[note.id] = nil
    return { status = 204 }
  end,
}
