#!lua
-- A device's session asks for its transfer of a rollout (the bridge's
-- TakeFileOffer, for each rollout in the device's index, oldest first).
--
-- KEYS[1..5] the rollout, its targets, active, waiting and results keys
--            (RolloutKeys, one slot)
-- ARGV[1] the serial
-- ARGV[2] the session, lowercase hex
-- ARGV[3] now, Unix ms
-- ARGV[4] the lease of an active transfer, ms (renewed by progress)
-- ARGV[5] the rollout's id (for notices)
--
-- Returns one of
--   {OFFER, file, size, name, offset, max_bytes_per_s}: the target is active in this
--     session (it was pending and a slot was free, or it was active in an
--     older session of the device, or already in this one): offer it;
--   {WAIT, why}: max_active transfers are under way, or the rollout is
--     paused; the serial waits in KEYS[4] and is woken when that changes;
--   {NONE, why, notice?}: nothing for this device (no such rollout or
--     target, done, declined, failed, cancelled, expired): the caller drops
--     the rollout from the device's index; a notice (JSON, to publish on
--     the device's file result channel) when this call expired the target.
local rollout, targets, active, waiting, results = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local serial, session = ARGV[1], ARGV[2]
local now, lease = tonumber(ARGV[3]), tonumber(ARGV[4])
local RESULTS_MAXLEN = 100000

local r = redis.call('HMGET', rollout, 'state', 'file', 'size', 'name', 'max_active', 'expires_ms', 'max_bytes_per_s')
local state, file, size, name = r[1], r[2], r[3], r[4]
if not state then
  return {'NONE', 'no such rollout'}
end
local raw = redis.call('HGET', targets, serial)
if not raw then
  return {'NONE', 'not a target'}
end
local t = cjson.decode(raw)
if t.state ~= 'pending' and t.state ~= 'active' then
  return {'NONE', t.state}
end
if state == 'cancelled' then
  return {'NONE', 'cancelled'}
end

if now >= tonumber(r[6]) then
  redis.call('HINCRBY', rollout, t.state, -1)
  redis.call('HINCRBY', rollout, 'failed', 1)
  redis.call('ZREM', active, serial)
  redis.call('ZREM', waiting, serial)
  t.state, t.why, t.updated_ms, t.session = 'failed', 'the rollout expired', now, nil
  redis.call('HSET', targets, serial, cjson.encode(t))
  local notice = cjson.encode({serial = serial, rollout = ARGV[5], file = file, state = 'failed',
    offset = t.offset, why = t.why, time_ms = now})
  redis.call('XADD', results, 'MAXLEN', '~', RESULTS_MAXLEN, '*',
    'serial', serial, 'rollout', ARGV[5], 'file', file, 'state', 'failed', 'offset', t.offset,
    'why', t.why, 'time_ms', now)
  return {'NONE', 'the rollout expired', notice}
end

local function offer()
  t.session, t.updated_ms = session, now
  redis.call('HSET', targets, serial, cjson.encode(t))
  redis.call('ZADD', active, now + lease, serial)
  redis.call('ZREM', waiting, serial)
  return {'OFFER', file, size, name, tostring(t.offset), r[7] or '0'}
end

if t.state == 'active' and t.session == session then
  return offer()
end
if state == 'paused' then
  redis.call('ZADD', waiting, 'NX', now, serial)
  return {'WAIT', 'paused'}
end
if t.state == 'active' then
  -- The device came back (anywhere) before its old session's lease ran
  -- out: its slot moves with it.
  return offer()
end

-- Slots whose lease ran out (a driver died mid-transfer) are free again;
-- their targets wait, with their offsets.
local lapsed = redis.call('ZRANGEBYSCORE', active, 0, now, 'LIMIT', 0, 100)
for _, other in ipairs(lapsed) do
  local other_raw = redis.call('HGET', targets, other)
  if other_raw then
    local o = cjson.decode(other_raw)
    if o.state == 'active' then
      o.state, o.session, o.updated_ms = 'pending', nil, now
      redis.call('HSET', targets, other, cjson.encode(o))
      redis.call('HINCRBY', rollout, 'active', -1)
      redis.call('HINCRBY', rollout, 'pending', 1)
    end
  end
  redis.call('ZREM', active, other)
end

if redis.call('ZCARD', active) >= tonumber(r[5]) then
  redis.call('ZADD', waiting, 'NX', now, serial)
  return {'WAIT', 'max_active'}
end
t.state = 'active'
redis.call('HINCRBY', rollout, 'pending', -1)
redis.call('HINCRBY', rollout, 'active', 1)
return offer()
