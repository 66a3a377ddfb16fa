#!lua
-- Runs when a driver's event stream says hello: records the driver id's
-- new process instance and, if it changed, hands back the serials the
-- previous instance held (the bridge then marks each offline with
-- mark_offline.lua, in its own slot).
--
-- KEYS[1] the driver's instance marker (Layout::driver_instance)
-- KEYS[2] the set of the driver's devices (Layout::driver_devices; the
--         same slot as KEYS[1])
-- ARGV[1] instance
-- Returns the set's members if the instance changed, else an empty list.
local marker, devices = KEYS[1], KEYS[2]
if redis.call('GET', marker) == ARGV[1] then
  return {}
end
redis.call('SET', marker, ARGV[1])
return redis.call('SMEMBERS', devices)
