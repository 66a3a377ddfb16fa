#!lua
-- Runs when a driver's event stream says hello: if the driver id now runs as
-- a new process instance, the previous instance is dead, and its devices
-- are marked offline. Sessions the new instance already registered stay.
--
-- ARGV: driver, instance
-- Returns how many devices were marked offline.
local driver, instance = ARGV[1], ARGV[2]
local marker = 'cwp:driver-instance:' .. driver
if redis.call('GET', marker) == instance then
  return 0
end
redis.call('SET', marker, instance)

local devices = 'cwp:driver-devices:' .. driver
local offline = 0
for _, serial in ipairs(redis.call('SMEMBERS', devices)) do
  local device = 'cwp:device:' .. serial
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
