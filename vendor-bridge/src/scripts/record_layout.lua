#!lua
-- Records the deployment's key layout on first use and returns the one
-- recorded, so that a bridge configured otherwise can refuse to store.
--
-- KEYS[1] the layout record (drover_schema::LAYOUT)
-- ARGV[1] partitions, ARGV[2] streams (comma-separated)
-- Returns the recorded {partitions, streams}.
local layout = KEYS[1]
if redis.call('HEXISTS', layout, 'partitions') == 0 then
  redis.call('HSET', layout, 'partitions', ARGV[1], 'streams', ARGV[2])
end
return redis.call('HMGET', layout, 'partitions', 'streams')
