#!lua
-- Creates a rollout's record (README, "Rollouts"): the first step of
-- starting one, before its targets (rollout_targets.lua). Idempotent by id.
--
-- KEYS[1] the rollout (RolloutKeys::rollout)
-- ARGV[1] the file's SHA-256, lowercase hex
-- ARGV[2] its size in bytes
-- ARGV[3] the name offered to devices
-- ARGV[4] max_active: transfers at once, fleet-wide (at least 1)
-- ARGV[5] retries after DIGEST_MISMATCH
-- ARGV[6] expires_ms: no transfer starts after it (Unix ms)
-- ARGV[7] now, Unix ms
-- ARGV[8] max_bytes_per_s: each driver sends the rollout's chunks at most
--         this fast, its transfers together (0 or absent: no limit)
--
-- Returns CREATED, or EXISTS (nothing changed).
local rollout = KEYS[1]
if redis.call('EXISTS', rollout) == 1 then
  return 'EXISTS'
end
if not string.find(ARGV[1], '^' .. string.rep('%x', 64) .. '$') then
  return redis.error_reply('ERR the file is a SHA-256 in hex')
end
if (tonumber(ARGV[4]) or 0) < 1 then
  return redis.error_reply('ERR max_active must be at least 1')
end
local max_bytes_per_s = tonumber(ARGV[8] or '0')
if not max_bytes_per_s or max_bytes_per_s < 0 then
  return redis.error_reply('ERR max_bytes_per_s is a number of bytes, 0 for no limit')
end
redis.call('HSET', rollout,
  'file', string.lower(ARGV[1]), 'size', ARGV[2], 'name', ARGV[3],
  'max_active', ARGV[4], 'retries', ARGV[5], 'expires_ms', ARGV[6], 'max_bytes_per_s', max_bytes_per_s,
  'state', 'running', 'created_ms', ARGV[7], 'targets', 0, 'bytes_acked', 0,
  'pending', 0, 'active', 0, 'done', 0, 'declined', 0, 'failed', 0, 'cancelled', 0)
return 'CREATED'
