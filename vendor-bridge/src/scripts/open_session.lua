#!lua
-- Installs a freshly authenticated session in the device registry and says
-- whether it replaced a live session of the serial (the bridge then tells
-- that session's driver to close it, and moves the serial between the
-- drivers' device sets: keys of other slots on a cluster, so not here).
--
-- KEYS[1] the serial's registry entry (Layout::device)
-- KEYS[2] the high-water marks of the serial's partition
--         (Layout::high_water_marks; the same slot as KEYS[1])
-- KEYS[3] the serial's durable command ledger (Layout::ledger; the same
--         slot)
-- KEYS[4] the serial's rollout index (Layout::file_offers; the same slot)
-- ARGV[1..7] serial, session (hex), driver, instance, peer, firmware,
--            connected_ms
-- Returns {last_event_id (decimal string, '0' if none), 1 if a previous
-- live session was superseded else 0, that session's driver, that
-- session's id} ('' for both when none), the number of commands in the
-- ledger, the number of rollouts in the index}. last_event_id is the serial's high-water mark, copied into the
-- registry as the session starts. The ledger's count lets the driver skip
-- TakeCommands for the (common) empty ledger: read here, in the script
-- that makes this session the live one, so a command enqueued later is
-- one the driver hears of by its wake-up.
local device, marks, ledger, file_offers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local serial, session, driver = ARGV[1], ARGV[2], ARGV[3]
local previous = redis.call('HMGET', device, 'online', 'driver', 'session')
local was_online, old_driver, old_session = previous[1], previous[2], previous[3]
local last_event_id = redis.call('HGET', marks, serial) or '0'
-- Every field but the sequence counter is a command.
local pending = redis.call('HLEN', ledger) - redis.call('HEXISTS', ledger, 'seq')
local offers = redis.call('ZCARD', file_offers)

redis.call('HSET', device,
  'online', '1', 'driver', driver, 'instance', ARGV[4], 'session', session,
  'peer', ARGV[5], 'firmware', ARGV[6], 'connected_ms', ARGV[7], 'last_seen_ms', ARGV[7],
  'last_event_id', last_event_id)

if was_online == '1' and old_session and old_session ~= session then
  return {last_event_id, 1, old_driver or '', old_session, pending, offers}
end
return {last_event_id, 0, '', '', pending, offers}
