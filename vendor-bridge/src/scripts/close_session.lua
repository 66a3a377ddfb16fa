#!lua
-- Marks a session ended, unless a newer session of the serial replaced it,
-- and brings the registry's last_event_id up to the high-water mark.
--
-- ARGV: serial, session (hex), driver, last_seen_ms
-- Returns 1 if the session was the registry's current one, else 0.
local serial = ARGV[1]
local device = 'cwp:device:' .. serial
if redis.call('HGET', device, 'session') ~= ARGV[2] then
  return 0
end
redis.call('HSET', device, 'online', '0', 'last_seen_ms', ARGV[4],
  'last_event_id', redis.call('HGET', 'cwp:hwm', serial) or '0')
redis.call('SREM', 'cwp:driver-devices:' .. ARGV[3], serial)
return 1
