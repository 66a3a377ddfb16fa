#!lua
-- Enqueues one durable command for a device: the documented operation of
-- the main application and of `drover send --queue` (README, "Durable
-- commands"). Atomic and idempotent by id.
--
-- KEYS[1] the device's ledger (Layout::ledger)
-- KEYS[2] the outcomes stream of the device's partition
--         (Layout::command_outcomes; the same slot as KEYS[1])
-- KEYS[3] the partition's expiry index (Layout::ledger_due; the same slot)
-- ARGV[1] the serial
-- ARGV[2] the command's id: a UUID, hyphenated (lowercased here)
-- ARGV[3] its name, 1-255 bytes
-- ARGV[4] its body as base64 ('' for none)
-- ARGV[5] its ttl in ms, a whole number above 0
-- ARGV[6] the most commands the device may have pending (CMD_MAX_QUEUED)
--
-- Returns {status, id, notice...}. status is QUEUED (enqueued now),
-- DUPLICATE (a command of that id is pending: nothing changed) or FULL
-- (ARGV[6] commands are pending: refused, nothing enqueued). The notices
-- are the JSON outcomes to publish on the device's result channel
-- (COMMAND_RESULTS): QUEUED, and EXPIRED for pending commands found past
-- their ttl; each is also in KEYS[2]. After a QUEUED, the caller publishes
-- {"ledger":true} on the device's command channel (COMMANDS), so that the
-- driver holding its session fetches it at once. Channels are of other
-- slots on a cluster: the caller publishes, not the script.
--
-- A ledger is a hash: field seq, the last sequence number given out, and
-- one field per pending command, its id, whose value is a JSON entry
-- (ledger_fields). The expiry index gets the serial with the command's
-- expiry (or keeps an earlier one): the bridge's sweep expires each command
-- when its ttl passes, with its EXPIRED outcome, whether or not the device
-- comes back. The hash itself expires an hour after its last command's
-- ttl, so that a ledger nobody sweeps still leaves Redis by itself.
local ledger, outcomes, due = KEYS[1], KEYS[2], KEYS[3]
local serial, name, body = ARGV[1], ARGV[3], ARGV[4]
local id = string.lower(ARGV[2])
local ttl, max_queued = tonumber(ARGV[5]), tonumber(ARGV[6])
local OUTCOMES_MAXLEN = 100000
local GRACE_MS = 3600000

local x = '%x'
local uuid = '^' .. string.rep(x, 8) .. '%-' .. string.rep(x, 4) .. '%-' .. string.rep(x, 4) .. '%-'
  .. string.rep(x, 4) .. '%-' .. string.rep(x, 12) .. '$'
if not string.find(id, uuid) then
  return redis.error_reply('ERR the command id must be a hyphenated UUID')
end
if #name < 1 or #name > 255 then
  return redis.error_reply('ERR the command name must be 1-255 bytes')
end
if not ttl or ttl < 1 or ttl ~= math.floor(ttl) then
  return redis.error_reply('ERR the ttl must be a whole number of ms above 0')
end
if not max_queued or max_queued < 1 then
  return redis.error_reply('ERR the most pending commands must be a number above 0')
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function outcome(command, status, extra)
  local notice = {['id'] = command, ['serial'] = serial, ['status'] = status, ['time_ms'] = now}
  for field, value in pairs(extra) do
    notice[field] = value
  end
  local json = cjson.encode(notice)
  redis.call('XADD', outcomes, 'MAXLEN', '~', OUTCOMES_MAXLEN, '*',
    'serial', serial, 'id', command, 'status', status, 'time_ms', now, 'notice', json)
  return json
end

-- Expired commands first: they leave room.
local notices = {}
local pending = 0
local fields = redis.call('HGETALL', ledger)
for i = 1, #fields, 2 do
  local field = fields[i]
  if field ~= 'seq' then
    local entry = cjson.decode(fields[i + 1])
    if now >= entry['expires_ms'] then
      redis.call('HDEL', ledger, field)
      notices[#notices + 1] = outcome(field, 'EXPIRED', {['attempt'] = entry['attempts']})
    else
      pending = pending + 1
    end
  end
end

if redis.call('HEXISTS', ledger, id) == 1 then
  return {'DUPLICATE', id, unpack(notices)}
end
if pending >= max_queued then
  return {'FULL', id, unpack(notices)}
end

local seq = redis.call('HINCRBY', ledger, 'seq', 1)
local expires = now + ttl
redis.call('HSET', ledger, id, cjson.encode({
  ['name'] = name, ['body_b64'] = body, ['seq'] = seq, ['enqueued_ms'] = now,
  ['expires_ms'] = expires, ['state'] = 'QUEUED', ['attempts'] = 0}))
local left = redis.call('PTTL', ledger)
if left < ttl + GRACE_MS then
  redis.call('PEXPIRE', ledger, ttl + GRACE_MS)
end
redis.call('ZADD', due, 'LT', expires, serial)
table.insert(notices, 1, outcome(id, 'QUEUED', {['expires_ms'] = expires}))
return {'QUEUED', id, unpack(notices)}
