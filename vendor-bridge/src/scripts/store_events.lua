#!lua
-- Stores one or more batches of events exactly once per (serial, event_id).
--
-- ARGV[1]      driver id, recorded with every event
-- ARGV[2]      k, the number of batches
-- ARGV[3..2+k] the number of events in each batch
-- then per event: serial, event_id, time_ms, kind, body, received_ms and,
-- only when kind is 65535 (a command result), the JSON notice to publish.
--
-- Returns, per batch, how many of its events were appended to cwp:events.
--
-- Event ids are u64 decimal strings without leading zeros. Lua numbers are
-- doubles that lose precision above 2^53, so ids are compared as strings and
-- never converted.
--
-- All or nothing: Redis does not roll a script back, so everything that can
-- fail runs before the first write. The shebang makes Redis refuse the whole
-- script when it is out of memory; every high-water mark is read (HGET fails
-- on a key of the wrong type) before the first XADD.
local call = redis.call
local argv = ARGV

-- Whether decimal id is above decimal mark: a longer one is larger; of equal
-- length, digit strings collate in digit order (Lua compares with strcoll).
local function above(id, mark)
  if #id ~= #mark then
    return #id > #mark
  end
  return id > mark
end

local driver = argv[1]
local batches = tonumber(argv[2])
local first = 3 + batches
local marks = {}   -- serial -> highest stored event id
local devices = {} -- serial -> its registry key
local seen = {}    -- serial -> received_ms of its latest event here
local touched = {} -- serials in the order first met

-- Reads: the high-water mark of every serial.
local last = #argv
local i = first
while i <= last do
  local serial = argv[i]
  if marks[serial] == nil then
    local device = 'cwp:device:' .. serial
    devices[serial] = device
    touched[#touched + 1] = serial
    marks[serial] = call('HGET', device, 'last_event_id') or '0'
  end
  if argv[i + 3] == '65535' then
    i = i + 7
  else
    i = i + 6
  end
end

-- Writes: append what is above the mark, advancing it.
local stored = {}
i = first
for b = 1, batches do
  local n = 0
  for _ = 1, tonumber(argv[2 + b]) do
    local serial, id, time_ms, kind, body, received_ms =
      argv[i], argv[i + 1], argv[i + 2], argv[i + 3], argv[i + 4], argv[i + 5]
    local notice
    if kind == '65535' then
      notice = argv[i + 6]
      i = i + 7
    else
      i = i + 6
    end
    if above(id, marks[serial]) then
      call('XADD', 'cwp:events', '*',
        'serial', serial, 'event_id', id, 'time_ms', time_ms, 'kind', kind,
        'body', body, 'driver', driver, 'received_ms', received_ms)
      marks[serial] = id
      n = n + 1
      if notice then
        call('PUBLISH', 'cwp:cmd-result:' .. serial, notice)
      end
    end
    seen[serial] = received_ms
  end
  stored[b] = n
end

for _, serial in ipairs(touched) do
  call('HSET', devices[serial], 'last_event_id', marks[serial], 'last_seen_ms', seen[serial])
end
return stored
