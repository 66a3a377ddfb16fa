#!lua
-- Marks a session ended, unless a newer session of the serial replaced it,
-- and brings the registry's last_event_id up to the high-water mark. (The
-- bridge then takes the serial out of its driver's device set.)
--
-- KEYS[1] the serial's registry entry (Layout::device)
-- KEYS[2] the high-water marks of the serial's partition
--         (Layout::high_water_marks; the same slot as KEYS[1])
-- ARGV: serial, session (hex), last_seen_ms
-- Returns 1 if the session was the registry's current one, else 0.
local device, marks = KEYS[1], KEYS[2]
local serial = ARGV[1]
if redis.call('HGET', device, 'session') ~= ARGV[2] then
  return 0
end
redis.call('HSET', device, 'online', '0', 'last_seen_ms', ARGV[3],
  'last_event_id', redis.call('HGET', marks, serial) or '0')
return 1
