#!lua
-- Runs when a driver's event stream says hello: if the driver id now runs as
-- a new process instance, the previous instance is dead, and its devices
-- are marked offline. Sessions the new instance already registered stay.
--
-- KEYS[1] the driver's instance marker (drover_schema::DRIVER_INSTANCE)
-- KEYS[2] the set of the driver's devices (drover_schema::DRIVER_DEVICES)
-- ARGV[1] driver id, ARGV[2] instance
-- ARGV[3] the prefix of registry entries (drover_schema::DEVICE): the
--         serials are only known once read from KEYS[2]
-- Returns how many devices were marked offline.
local marker, devices = KEYS[1], KEYS[2]
local driver, instance, device_prefix = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', marker) == instance then
  return 0
end
redis.call('SET', marker, instance)

local offline = 0
for _, serial in ipairs(redis.call('SMEMBERS', devices)) do
  local device = device_prefix .. serial
  local owner = redis.call('HMGET', device, 'driver', 'instance')
  if owner[1] == driver then
    if owner[2] ~= instance then
      redis.call('HSET', device, 'online', '0')
      redis.call('SREM', devices, serial)
      offline = offline + 1
    end
  else
    -- The serial's session moved to another driver: not ours to keep.
    redis.call('SREM', devices, serial)
  end
end
return offline
