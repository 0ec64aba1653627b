-- Shared prelude of the job-record scripts; records.py prepends it to each operation's file.
--
-- Key layout: one hash per job (KEYS[1], "<prefix>:job:<id>"), each field one JSON value as
-- Python's json.dumps wrote it: state, kind, service, attempts, last_error, deferred_until,
-- created_at, updated_at, details (an object), history (an array of entries). KEYS[2] is the
-- sorted set of unfinished jobs, scored by their last sign of life (epoch seconds).
--
-- These helpers never decode a stored value into Lua data and encode it again (cjson would
-- round floats to 14 digits and turn an empty list into {}): they split a JSON array or
-- object into the raw texts of its top-level members and join raw texts back, with json.dumps's
-- separators (", " and ": "), so an unchanged value keeps its exact bytes.

-- The position of the closing quote of the JSON string opening at `at`.
local function string_end(text, at)
  local pos = at + 1
  while true do
    local found = string.find(text, '["\\]', pos)
    if not found then return #text end
    if string.sub(text, found, found) == '"' then return found end
    pos = found + 2
  end
end

-- `text` from `first` to `last` without surrounding white space.
local function trimmed(text, first, last)
  while first <= last and string.find(string.sub(text, first, first), '%s') do
    first = first + 1
  end
  while last >= first and string.find(string.sub(text, last, last), '%s') do
    last = last - 1
  end
  return string.sub(text, first, last)
end

-- The raw texts of the top-level members of the JSON array or object `text`, in order.
local function members(text)
  local found, depth, start, pos = {}, 0, 1, 1
  while true do
    local at = string.find(text, '[%[%]{}",]', pos)
    if not at then return found end
    local char = string.sub(text, at, at)
    pos = at + 1
    if char == '"' then
      pos = string_end(text, at) + 1
    elseif char == '[' or char == '{' then
      depth = depth + 1
      if depth == 1 then start = at + 1 end
    elseif char == ']' or char == '}' then
      depth = depth - 1
      if depth == 0 then
        local last = trimmed(text, start, at - 1)
        if last ~= '' then found[#found + 1] = last end
        return found
      end
    elseif depth == 1 then
      found[#found + 1] = trimmed(text, start, at - 1)
      start = at + 1
    end
  end
end

-- The JSON array `array` with `entry` (a raw JSON text) appended, keeping its last `limit`.
local function appended(array, entry, limit)
  local items = members(array)
  items[#items + 1] = entry
  local first = math.max(1, #items - limit + 1)
  return '[' .. table.concat(items, ', ', first, #items) .. ']'
end

-- The JSON object `object` with the members of the JSON object `update` merged in: a key
-- already there keeps its place and takes the new value, a new key is added at the end (as
-- Python's {**object, **update}). Keys are compared as json.dumps wrote them.
local function merged(object, update)
  local keys, values = {}, {}
  for _, source in ipairs({object, update}) do
    for _, member in ipairs(members(source)) do
      local key_end = string_end(member, 1)
      local key = string.sub(member, 1, key_end)
      local colon = string.find(member, ':', key_end + 1, true)
      if values[key] == nil then keys[#keys + 1] = key end
      values[key] = trimmed(member, colon + 1, #member)
    end
  end
  local pairs_ = {}
  for i, key in ipairs(keys) do pairs_[i] = key .. ': ' .. values[key] end
  return '{' .. table.concat(pairs_, ', ') .. '}'
end

-- Whether the raw JSON `value` is one of the members of the JSON array `array`.
local function among(value, array)
  for _, member in ipairs(members(array)) do
    if member == value then return true end
  end
  return false
end

-- One history entry, as records.history_entry writes it; every argument is a raw JSON text.
local function history_entry(at, state, service, note)
  return '{"at": ' .. at .. ', "state": ' .. state .. ', "service": ' .. service
    .. ', "note": ' .. note .. '}'
end
