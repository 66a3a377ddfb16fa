#!lua
-- One serial of a restarted driver: marks it offline if its registry entry
-- still names the driver's previous instance.
--
-- KEYS[1] the serial's registry entry (Layout::device)
-- ARGV[1] driver id, ARGV[2] the driver's new instance
-- Returns 1 if marked offline, 0 if the new instance holds its session
-- (keep it in the driver's set), 2 if another driver holds it (not the
-- driver's any more).
local owner = redis.call('HMGET', KEYS[1], 'driver', 'instance')
if owner[1] ~= ARGV[1] then
  return 2
end
if owner[2] == ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'online', '0')
return 1
