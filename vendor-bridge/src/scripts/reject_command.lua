#!lua
-- Records a command that never reached its device and tells the operator.
--
-- KEYS[1] the rejected commands stream (drover_schema::REJECTED_COMMANDS)
-- ARGV[1..7] serial, command_id, outcome, reason, message, driver,
--            rejected_ms
-- ARGV[8] the notice (JSON), published on
-- ARGV[9] the serial's result channel (drover_schema::COMMAND_RESULTS)
local rejected = KEYS[1]
redis.call('XADD', rejected, 'MAXLEN', '~', '100000', '*',
  'serial', ARGV[1], 'command_id', ARGV[2], 'outcome', ARGV[3], 'reason', ARGV[4],
  'message', ARGV[5], 'driver', ARGV[6], 'rejected_ms', ARGV[7])
redis.call('PUBLISH', ARGV[9], ARGV[8])
return 1
