#!lua
-- Records a command that never reached its device and tells the operator.
--
-- ARGV: serial, command_id, outcome, reason, message, driver, rejected_ms,
-- notice (the JSON to publish on cwp:cmd-result:{serial})
local serial = ARGV[1]
redis.call('XADD', 'cwp:cmd-rejected', 'MAXLEN', '~', '100000', '*',
  'serial', serial, 'command_id', ARGV[2], 'outcome', ARGV[3], 'reason', ARGV[4],
  'message', ARGV[5], 'driver', ARGV[6], 'rejected_ms', ARGV[7])
redis.call('PUBLISH', 'cwp:cmd-result:' .. serial, ARGV[8])
return 1
