#!lua
-- Installs a freshly authenticated session in the device registry and tells
-- the driver of a previous live session of the serial to close it.
--
-- ARGV: serial, session (hex), driver, instance, peer, firmware, connected_ms
-- Returns {last_event_id (decimal string, '0' if none), 1 if a previous
-- session was superseded else 0}. last_event_id is the serial's high-water
-- mark (cwp:hwm), copied into the registry as the session starts.
local serial, session, driver = ARGV[1], ARGV[2], ARGV[3]
local device = 'cwp:device:' .. serial
local previous = redis.call('HMGET', device, 'online', 'driver', 'session')
local was_online, old_driver, old_session = previous[1], previous[2], previous[3]
local last_event_id = redis.call('HGET', 'cwp:hwm', serial) or '0'

redis.call('HSET', device,
  'online', '1', 'driver', driver, 'instance', ARGV[4], 'session', session,
  'peer', ARGV[5], 'firmware', ARGV[6], 'connected_ms', ARGV[7], 'last_seen_ms', ARGV[7],
  'last_event_id', last_event_id)
redis.call('SADD', 'cwp:driver-devices:' .. driver, serial)

local superseded = 0
if was_online == '1' and old_session and old_session ~= session then
  superseded = 1
  if old_driver then
    redis.call('PUBLISH', 'cwp:driver:' .. old_driver,
      cjson.encode({type = 'supersede', serial = serial, session = old_session}))
    if old_driver ~= driver then
      redis.call('SREM', 'cwp:driver-devices:' .. old_driver, serial)
    end
  end
end
return {last_event_id, superseded}
