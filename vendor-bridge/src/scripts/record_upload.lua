#!lua
-- Appends one upload_completed record per (serial, upload_id), however often
-- the driver asks.
--
-- ARGV: serial, upload_id, name, size, sha256, path, driver, completed_ms
-- Returns 1 if the record was appended, 0 if it already had been.
local serial, upload_id = ARGV[1], ARGV[2]
if not redis.call('SET', 'cwp:upload-recorded:' .. serial .. ':' .. upload_id, '1', 'NX') then
  return 0
end
redis.call('XADD', 'cwp:uploads', '*',
  'type', 'upload_completed', 'serial', serial, 'upload_id', upload_id, 'name', ARGV[3],
  'size', ARGV[4], 'sha256', ARGV[5], 'path', ARGV[6], 'driver', ARGV[7], 'completed_ms', ARGV[8])
return 1
