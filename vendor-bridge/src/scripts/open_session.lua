#!lua
-- Installs a freshly authenticated session in the device registry and tells
-- the driver of a previous live session of the serial to close it.
--
-- KEYS[1] the serial's registry entry (drover_schema::DEVICE)
-- KEYS[2] the high-water marks (drover_schema::HIGH_WATER_MARKS)
-- KEYS[3] the set of the new session's driver's devices
--         (drover_schema::DRIVER_DEVICES)
-- ARGV[1..7] serial, session (hex), driver, instance, peer, firmware,
--            connected_ms
-- ARGV[8] the prefix of drivers' device sets (drover_schema::DRIVER_DEVICES)
-- ARGV[9] the prefix of drivers' control channels
--         (drover_schema::DRIVER_CONTROL): the previous driver is only known
--         once read from KEYS[1]
-- Returns {last_event_id (decimal string, '0' if none), 1 if a previous
-- session was superseded else 0}. last_event_id is the serial's high-water
-- mark, copied into the registry as the session starts.
local device, marks, driver_devices = KEYS[1], KEYS[2], KEYS[3]
local serial, session, driver = ARGV[1], ARGV[2], ARGV[3]
local driver_devices_prefix, control_prefix = ARGV[8], ARGV[9]
local previous = redis.call('HMGET', device, 'online', 'driver', 'session')
local was_online, old_driver, old_session = previous[1], previous[2], previous[3]
local last_event_id = redis.call('HGET', marks, serial) or '0'

redis.call('HSET', device,
  'online', '1', 'driver', driver, 'instance', ARGV[4], 'session', session,
  'peer', ARGV[5], 'firmware', ARGV[6], 'connected_ms', ARGV[7], 'last_seen_ms', ARGV[7],
  'last_event_id', last_event_id)
redis.call('SADD', driver_devices, serial)

local superseded = 0
if was_online == '1' and old_session and old_session ~= session then
  superseded = 1
  if old_driver then
    redis.call('PUBLISH', control_prefix .. old_driver,
      cjson.encode({['type'] = 'supersede', ['serial'] = serial, ['session'] = old_session}))
    if old_driver ~= driver then
      redis.call('SREM', driver_devices_prefix .. old_driver, serial)
    end
  end
end
return {last_event_id, superseded}
