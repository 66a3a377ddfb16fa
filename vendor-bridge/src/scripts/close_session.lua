#!lua
-- Marks a session ended, unless a newer session of the serial replaced it,
-- and brings the registry's last_event_id up to the high-water mark.
--
-- KEYS[1] the serial's registry entry (drover_schema::DEVICE)
-- KEYS[2] the high-water marks (drover_schema::HIGH_WATER_MARKS)
-- KEYS[3] the set of the driver's devices (drover_schema::DRIVER_DEVICES)
-- ARGV: serial, session (hex), last_seen_ms
-- Returns 1 if the session was the registry's current one, else 0.
local device, marks, driver_devices = KEYS[1], KEYS[2], KEYS[3]
local serial = ARGV[1]
if redis.call('HGET', device, 'session') ~= ARGV[2] then
  return 0
end
redis.call('HSET', device, 'online', '0', 'last_seen_ms', ARGV[3],
  'last_event_id', redis.call('HGET', marks, serial) or '0')
redis.call('SREM', driver_devices, serial)
return 1
