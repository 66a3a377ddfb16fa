#!lua
-- A driver reports a transfer's progress or outcome (the bridge's
-- ReportFileTransfer).
--
-- KEYS[1..5] the rollout, its targets, active, waiting and results keys
--            (RolloutKeys, one slot)
-- ARGV[1] the serial
-- ARGV[2] the session, lowercase hex
-- ARGV[3] what happened (schema rollout::report): progress, released,
--         done, declined, aborted, digest_mismatch
-- ARGV[4] the bytes the device holds (its last FILE_ACK or FILE_ACCEPT
--         offset)
-- ARGV[5] now, Unix ms
-- ARGV[6] the lease of an active transfer, ms
-- ARGV[7] the rollout's id (for notices)
--
-- Returns {answer, notice?}:
--   CONTINUE: go on sending (progress; the lease is renewed);
--   STOP: send nothing more (the rollout is paused: the target waits in
--     KEYS[4] with its offset; or cancelled; or the target is no longer
--     active in this session);
--   REOFFER: offer the file again from 0 in this session (a mismatch with
--     retries left);
--   FREED: the transfer is over (or released) and its slot is free: the
--     caller wakes devices waiting in KEYS[4].
-- A notice (JSON, to publish on the device's file result channel) comes
-- with every outcome that is also appended to KEYS[5].
local rollout, targets, active, waiting, results = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local serial, session, what = ARGV[1], ARGV[2], ARGV[3]
local offset, now, lease, id = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local RESULTS_MAXLEN = 100000

local raw = redis.call('HGET', targets, serial)
if not raw then
  return {'STOP'}
end
local t = cjson.decode(raw)
if t.state ~= 'active' or t.session ~= session then
  return {'STOP'}
end
local r = redis.call('HMGET', rollout, 'state', 'file', 'size', 'retries')
local state, file, size, retries = r[1], r[2], tonumber(r[3]), tonumber(r[4])

if offset > t.offset then
  redis.call('HINCRBY', rollout, 'bytes_acked', offset - t.offset)
end
t.offset, t.updated_ms = offset, now

local function result(new_state, why)
  redis.call('XADD', results, 'MAXLEN', '~', RESULTS_MAXLEN, '*',
    'serial', serial, 'rollout', id, 'file', file, 'state', new_state, 'offset', offset,
    'why', why, 'time_ms', now)
  return cjson.encode({serial = serial, rollout = id, file = file, state = new_state,
    offset = offset, why = why, time_ms = now})
end

-- The target leaves `active` for `new_state`; its slot is free.
local function leave(new_state, why)
  t.state, t.session, t.why = new_state, nil, why
  redis.call('HSET', targets, serial, cjson.encode(t))
  redis.call('HINCRBY', rollout, 'active', -1)
  redis.call('HINCRBY', rollout, new_state, 1)
  redis.call('ZREM', active, serial)
end

if what == 'progress' then
  if state ~= 'running' then
    leave('pending', nil)
    redis.call('ZADD', waiting, 'NX', now, serial)
    return {'STOP'}
  end
  redis.call('HSET', targets, serial, cjson.encode(t))
  redis.call('ZADD', active, now + lease, serial)
  return {'CONTINUE'}
elseif what == 'released' then
  leave('pending', nil)
  return {'FREED'}
elseif what == 'done' then
  leave('done', nil)
  return {'FREED', result('done', '')}
elseif what == 'declined' then
  leave('declined', 'the device declined the file')
  return {'FREED', result('declined', t.why)}
elseif what == 'aborted' then
  leave('failed', 'the device aborted the transfer')
  return {'FREED', result('failed', t.why)}
elseif what == 'digest_mismatch' then
  t.mismatches = (t.mismatches or 0) + 1
  if t.mismatches > retries then
    leave('failed', 'digest mismatch ' .. t.mismatches .. ' times')
    return {'FREED', result('failed', t.why)}
  end
  t.offset = 0
  redis.call('HSET', targets, serial, cjson.encode(t))
  redis.call('ZADD', active, now + lease, serial)
  return {'REOFFER', result('retrying', 'digest mismatch ' .. t.mismatches .. ' of at most ' .. (retries + 1))}
end
return redis.error_reply('ERR unknown report ' .. what)
