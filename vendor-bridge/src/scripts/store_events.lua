#!lua
-- Stores one or more batches of events exactly once per (serial, event_id).
--
-- One partition's part of the batches: every serial below belongs to the
-- partition of KEYS[1] and KEYS[2], so on a cluster every key is in one
-- slot.
--
-- KEYS[1]      the partition's events stream (Layout::events)
-- KEYS[2]      its high-water marks (Layout::high_water_marks)
-- KEYS[3]      its durable commands' outcomes (Layout::command_outcomes)
-- KEYS[4..3+r] the registry entries (Layout::device) of the r serials
--              whose entry this call refreshes, in the order of the
--              serials below
-- KEYS[4+r..]  the ledgers (Layout::ledger) of the serials with command
--              results in the call
-- ARGV[1]      driver id, recorded with every event
-- ARGV[2]      k, the number of batches
-- ARGV[3]      s, the number of distinct serials in the call
-- ARGV[4]      r
-- ARGV[5..4+s] the distinct serials, the r to refresh first
-- ARGV[5+s..4+s+k] the number of events in each batch
-- then per event: serial index (1-based, into the serials above), event_id,
-- time_ms, kind, body, received_ms and, only when kind is 65535 (a command
-- result), the JSON notice to publish, the command's id ('' when
-- unreadable) and the index in KEYS of its serial's ledger.
--
-- Returns {counts, notices, unmatched}: per batch, how many of its events
-- were appended to KEYS[1]; for each command result newly stored and to be
-- published, its serial and notice (the bridge publishes them on the
-- serial's result channel, of another slot on a cluster); and how many
-- results answered a durable command that was never sent (ignored:
-- counted, not published, the command stays). Nobody is woken when a
-- settled command leaves more in its ledger: the driver that stored the
-- result hands its session more by itself (TakeCommands' `waiting`).
--
-- A command result newly stored settles its durable command, here, in the
-- same call: when the device's ledger holds the id as SENT, the command
-- leaves the ledger and its outcome is appended to KEYS[3], exactly once
-- however often the batch is stored. A result for an id the ledger does
-- not hold (a command published on the channel, or answered already) is
-- published as ever.
--
-- The high-water marks live in one hash, KEYS[2] (serial -> highest stored
-- event id): one HMGET reads them all and one HSET writes them all, so the
-- cost per event is its XADD, whatever the number of devices (in chunks of
-- a thousand serials, see CHUNK). The registry gets last_event_id and
-- last_seen_ms only for the r serials the bridge asks for (at most about
-- once a second per serial); session open and close bring it up to date
-- too.
--
-- Event ids are u64 decimal strings without leading zeros. Lua numbers are
-- doubles that lose precision above 2^53, so ids are compared as strings and
-- never converted.
--
-- All or nothing: Redis does not roll a script back, so everything that can
-- fail runs before the first write. The shebang makes Redis refuse the whole
-- script when it is out of memory; the HMGET (which fails on a key of the
-- wrong type) runs before the first XADD. The ledgers are read after the
-- first XADD: only the ledger scripts write them, always as hashes.
local call = redis.call
local argv = ARGV

-- Whether decimal id is above decimal mark: a longer one is larger; of equal
-- length, digit strings collate in digit order.
local function above(id, mark)
  if #id ~= #mark then
    return #id > #mark
  end
  return id > mark
end

local events, marks_key, outcomes = KEYS[1], KEYS[2], KEYS[3]
local driver = argv[1]
local batches = tonumber(argv[2])
local nserials = tonumber(argv[3])
local refresh = tonumber(argv[4])
local serials = {}
for j = 1, nserials do
  serials[j] = argv[4 + j]
end
local OUTCOMES_MAXLEN = 100000

-- unpack() fails beyond about 8,000 values (Lua's C stack limit): commands
-- that take one or two arguments per serial go in chunks of this many
-- serials. A call holds up to 2 x 2,048 events, each of a different serial.
local CHUNK = 1000

-- Reads: every serial's high-water mark, a chunk of serials per HMGET.
local marks = {}
for first = 1, nserials, CHUNK do
  local last = math.min(first + CHUNK - 1, nserials)
  local part = call('HMGET', marks_key, unpack(serials, first, last))
  for j = first, last do
    marks[j] = part[j - first + 1] or '0'
  end
end

-- Writes: append what is above the mark, advancing it.
local advanced = {} -- serial index -> true once its mark moved
local seen = {}     -- serial index -> received_ms of its latest event
local stored = {}
local notices = {}
local unmatched = 0

-- Settles the durable command a newly stored result answers; whether its
-- notice is to be published.
local function settle(serial, command, ledger, notice, received_ms)
  if command == '' or not ledger then
    return true
  end
  local raw = call('HGET', ledger, command)
  if not raw then
    return true
  end
  local ok, entry = pcall(cjson.decode, raw)
  if not ok or entry['state'] ~= 'SENT' then
    unmatched = unmatched + 1
    return false
  end
  local read, fields = pcall(cjson.decode, notice)
  local status = read and fields['status'] or ''
  call('HDEL', ledger, command)
  call('XADD', outcomes, 'MAXLEN', '~', OUTCOMES_MAXLEN, '*',
    'serial', serial, 'id', command, 'status', status, 'time_ms', received_ms, 'notice', notice)
  if call('HLEN', ledger) <= 1 then
    call('DEL', ledger)
  end
  return true
end

local i = 5 + nserials + batches
for b = 1, batches do
  local n = 0
  for _ = 1, tonumber(argv[4 + nserials + b]) do
    local j = tonumber(argv[i])
    local id, time_ms, kind, body, received_ms = argv[i + 1], argv[i + 2], argv[i + 3], argv[i + 4], argv[i + 5]
    local notice, command, ledger
    if kind == '65535' then
      notice, command, ledger = argv[i + 6], argv[i + 7], KEYS[tonumber(argv[i + 8])]
      i = i + 9
    else
      i = i + 6
    end
    local serial = serials[j]
    if above(id, marks[j]) then
      call('XADD', events, '*',
        'serial', serial, 'event_id', id, 'time_ms', time_ms, 'kind', kind,
        'body', body, 'driver', driver, 'received_ms', received_ms)
      marks[j] = id
      advanced[j] = true
      n = n + 1
      if notice and settle(serial, command, ledger, notice, received_ms) then
        notices[#notices + 1] = serial
        notices[#notices + 1] = notice
      end
    end
    seen[j] = received_ms
  end
  stored[b] = n
end

local updates = {}
for j = 1, nserials do
  if advanced[j] then
    updates[#updates + 1] = serials[j]
    updates[#updates + 1] = marks[j]
  end
  if #updates >= 2 * CHUNK or (j == nserials and #updates > 0) then
    call('HSET', marks_key, unpack(updates))
    updates = {}
  end
end
for j = 1, refresh do
  call('HSET', KEYS[3 + j], 'last_event_id', marks[j], 'last_seen_ms', seen[j])
end

-- A call that wrote nothing (its events all stored before, its registry
-- entries fresh) writes one high-water mark again, unchanged: the bridge's
-- WAIT (BRIDGE_WAIT_REPLICAS) confirms what this connection wrote, and a
-- call that wrote nothing, on a connection dialled again since the first
-- attempt stored the events, would be confirmed by replicas that may not
-- have them yet.
if next(advanced) == nil and refresh == 0 then
  for j = 1, nserials do
    if marks[j] ~= '0' then
      call('HSET', marks_key, serials[j], marks[j])
      break
    end
  end
end
return {stored, notices, unmatched}
