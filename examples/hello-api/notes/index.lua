-- /notes — a method table: GET lists the notes, POST creates one.
-- Other methods get 405 with "allow: GET, HEAD, POST".
local api = require "_lib.api"

return {
  GET = function(req)
    local list = {}
    for id = 1, api.next_id - 1 do
      if api.notes[id] then list[#list + 1] = api.notes[id] end
    end
    return api.json(200, nil, api.array(list))
  end,

  POST = function(req)
    local input, bad = api.read_json(req)
    if not input then return bad end
    if type(input.text) ~= "string" or input.text == "" then
      return api.error(422, "field 'text' (a non-empty string) is required")
    end
    local note = { id = api.next_id, text = input.text }
    api.notes[note.id] = note
    api.next_id = api.next_id + 1
    local res = api.json(201, note)
    res.headers.location = "/notes/" .. note.id
    return res
  end,
}
