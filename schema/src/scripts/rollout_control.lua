#!lua
-- Pauses, resumes or cancels a rollout (README, "Rollouts").
--
-- KEYS[1..5] the rollout, its targets, active, waiting and results keys
--            (RolloutKeys, one slot)
-- ARGV[1] pause, resume or cancel
-- ARGV[2] now, Unix ms
-- ARGV[3] the rollout's id (for notices)
--
-- Returns {answer, {serials to wake}, {notices}}: answer OK (done, or it
-- was so already), UNKNOWN (no such rollout) or CANCELLED (it is
-- cancelled: pause and resume change nothing). The caller publishes
-- {"files":true} on each serial's command channel (pause and cancel: the
-- active transfers' drivers stop them at once, between chunks; resume: the
-- devices that wait get their offers) and each notice on its device's file
-- result channel.
local rollout, targets, active, waiting, results = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local action, now, id = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local RESULTS_MAXLEN = 100000

local state = redis.call('HGET', rollout, 'state')
if not state then
  return {'UNKNOWN', {}, {}}
end
if state == 'cancelled' then
  return {'CANCELLED', {}, {}}
end
if action == 'pause' then
  redis.call('HSET', rollout, 'state', 'paused')
  return {'OK', redis.call('ZRANGE', active, 0, -1), {}}
elseif action == 'resume' then
  redis.call('HSET', rollout, 'state', 'running')
  return {'OK', redis.call('ZRANGE', waiting, 0, -1), {}}
elseif action == 'cancel' then
  local file = redis.call('HGET', rollout, 'file')
  local woken, notices = redis.call('ZRANGE', active, 0, -1), {}
  for _, serial in ipairs(woken) do
    local raw = redis.call('HGET', targets, serial)
    if raw then
      local t = cjson.decode(raw)
      t.state, t.session, t.updated_ms = 'cancelled', nil, now
      redis.call('HSET', targets, serial, cjson.encode(t))
      redis.call('XADD', results, 'MAXLEN', '~', RESULTS_MAXLEN, '*',
        'serial', serial, 'rollout', id, 'file', file, 'state', 'cancelled', 'offset', t.offset,
        'why', 'the rollout was cancelled', 'time_ms', now)
      notices[#notices + 1] = cjson.encode({serial = serial, rollout = id, file = file,
        state = 'cancelled', offset = t.offset, why = 'the rollout was cancelled', time_ms = now})
    end
  end
  -- Targets still pending are cancelled by count; their entries stay
  -- `pending` and read as cancelled under a cancelled rollout.
  local moved = tonumber(redis.call('HGET', rollout, 'pending')) + tonumber(redis.call('HGET', rollout, 'active'))
  redis.call('HSET', rollout, 'state', 'cancelled', 'pending', 0, 'active', 0)
  redis.call('HINCRBY', rollout, 'cancelled', moved)
  redis.call('DEL', active, waiting)
  return {'OK', woken, notices}
end
return redis.error_reply('ERR unknown action ' .. action)
