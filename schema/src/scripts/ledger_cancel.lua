#!lua
-- Cancels a durable command that was not sent yet (`drover cancel`).
--
-- KEYS[1] the device's ledger (Layout::ledger)
-- KEYS[2] the outcomes stream of its partition (Layout::command_outcomes)
-- ARGV[1] the serial
-- ARGV[2] the command's id (lowercased here)
--
-- Returns {status, notice}: CANCELLED with the JSON outcome to publish on
-- the device's result channel (also in KEYS[2]); SENT when it was sent
-- already (it stays: the device may be running it), with the attempt
-- number instead of a notice; UNKNOWN when no such command is pending
-- (never queued, already answered, expired or cancelled), with ''.
local ledger, outcomes = KEYS[1], KEYS[2]
local serial = ARGV[1]
local id = string.lower(ARGV[2])
local OUTCOMES_MAXLEN = 100000

local raw = redis.call('HGET', ledger, id)
if not raw then
  return {'UNKNOWN', ''}
end
local entry = cjson.decode(raw)
if entry['state'] ~= 'QUEUED' then
  return {'SENT', tostring(entry['attempts'])}
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('HDEL', ledger, id)
if redis.call('HLEN', ledger) <= 1 then
  redis.call('DEL', ledger)
end
local json = cjson.encode({['id'] = id, ['serial'] = serial, ['status'] = 'CANCELLED', ['time_ms'] = now})
redis.call('XADD', outcomes, 'MAXLEN', '~', OUTCOMES_MAXLEN, '*',
  'serial', serial, 'id', id, 'status', 'CANCELLED', 'time_ms', now, 'notice', json)
return {'CANCELLED', json}
