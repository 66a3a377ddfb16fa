#!lua
-- Appends one upload_completed record per (serial, upload_id), however often
-- the driver asks.
--
-- KEYS[1] the upload's marker (drover_schema::UPLOAD_RECORDED)
-- KEYS[2] the uploads stream (drover_schema::UPLOADS)
-- ARGV: serial, upload_id, name, size, sha256, path, driver, completed_ms, transport
-- Returns 1 if the record was appended, 0 if it already had been.
local marker, uploads = KEYS[1], KEYS[2]
if not redis.call('SET', marker, '1', 'NX') then
  return 0
end
redis.call('XADD', uploads, '*',
  'type', 'upload_completed', 'serial', ARGV[1], 'upload_id', ARGV[2], 'name', ARGV[3],
  'size', ARGV[4], 'sha256', ARGV[5], 'path', ARGV[6], 'driver', ARGV[7], 'completed_ms', ARGV[8],
  'transport', ARGV[9])
return 1
