#!lua
-- Adds targets to a rollout, each `pending` (README, "Rollouts"): after
-- rollout_start.lua, in calls of at most 1,000 serials. A serial that is a
-- target already is left as it is. After each call, the caller adds the
-- rollout's id to each new target's index (Layout::file_offers: ZADD, score
-- the rollout's created_ms) and publishes {"files":true} on its command
-- channel, so that online devices are offered the file at once.
--
-- KEYS[1] the rollout, KEYS[2] its targets (the same slot)
-- ARGV[1] now, Unix ms
-- ARGV[2..] serials
--
-- Returns the serials added now.
local rollout, targets = KEYS[1], KEYS[2]
local state = redis.call('HGET', rollout, 'state')
if not state then
  return redis.error_reply('ERR no such rollout')
end
if state == 'cancelled' then
  return redis.error_reply('ERR the rollout is cancelled')
end
local fresh = cjson.encode({state = 'pending', offset = 0, mismatches = 0, updated_ms = tonumber(ARGV[1])})
local added = {}
for i = 2, #ARGV do
  if redis.call('HSETNX', targets, ARGV[i], fresh) == 1 then
    added[#added + 1] = ARGV[i]
  end
end
redis.call('HINCRBY', rollout, 'targets', #added)
redis.call('HINCRBY', rollout, 'pending', #added)
return added
