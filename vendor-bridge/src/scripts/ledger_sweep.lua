#!lua
-- Expires what is due in one device's ledger (the bridge's sweep of
-- Layout::ledger_due): each command past its ttl leaves with its EXPIRED
-- outcome, whether or not the device ever comes back; the serial's score
-- in the expiry index moves to its next command's expiry, or the serial
-- leaves the index with its ledger's last command.
--
-- KEYS[1] the device's ledger (Layout::ledger)
-- KEYS[2] the outcomes stream of its partition (Layout::command_outcomes)
-- KEYS[3] the partition's expiry index (Layout::ledger_due)
-- KEYS[4] the device's registry entry (Layout::device); all in one slot
-- ARGV[1] the serial
--
-- Returns {notices, wake}: the JSON outcomes to publish on the device's
-- result channel (each also in KEYS[2]), and 1 when a command sent in the
-- device's live session expired while others wait (the bridge wakes its
-- driver, whose session may now be given them), else 0.
--
-- Sweeping twice is harmless: a command expires once (its HDEL), and a
-- serial swept early only has its score moved on.
local ledger, outcomes, due, device = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local serial = ARGV[1]
local OUTCOMES_MAXLEN = 100000

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local fields = redis.call('HGETALL', ledger)
local live = redis.call('HMGET', device, 'online', 'session')
local live_session = live[1] == '1' and live[2] or nil

local notices = {}
local expired_in_session = false
local next_expiry = nil
local left = 0
for i = 1, #fields, 2 do
  local id = fields[i]
  if id ~= 'seq' then
    local ok, entry = pcall(cjson.decode, fields[i + 1])
    if ok and now >= entry['expires_ms'] then
      redis.call('HDEL', ledger, id)
      local notice = cjson.encode({['id'] = id, ['serial'] = serial, ['status'] = 'EXPIRED',
        ['time_ms'] = now, ['attempt'] = entry['attempts']})
      redis.call('XADD', outcomes, 'MAXLEN', '~', OUTCOMES_MAXLEN, '*',
        'serial', serial, 'id', id, 'status', 'EXPIRED', 'time_ms', now, 'notice', notice)
      notices[#notices + 1] = notice
      if entry['state'] == 'SENT' and entry['session'] == live_session then
        expired_in_session = true
      end
    elseif ok then
      left = left + 1
      if not next_expiry or entry['expires_ms'] < next_expiry then
        next_expiry = entry['expires_ms']
      end
    else
      -- Not written by our scripts: leave it, and look again in a minute.
      left = left + 1
      next_expiry = math.min(next_expiry or (now + 60000), now + 60000)
    end
  end
end

if left == 0 then
  redis.call('DEL', ledger)
  redis.call('ZREM', due, serial)
else
  redis.call('ZADD', due, next_expiry, serial)
end
return {notices, (expired_in_session and left > 0) and 1 or 0}
