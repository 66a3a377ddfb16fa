#!lua
-- The durable commands to send now in a device's live session
-- (TakeCommands), in order, each marked SENT in that session.
--
-- KEYS[1] the device's ledger (Layout::ledger)
-- KEYS[2] the outcomes stream of its partition (Layout::command_outcomes)
-- KEYS[3] its registry entry (Layout::device); all three in one slot
-- ARGV[1] the serial
-- ARGV[2] the session, lowercase hex
-- ARGV[3] the most commands unanswered at once in the session
-- ARGV[4] the most bytes of name and body a command may have for the
--         device (its payload limit less the frame's fixed part)
--
-- Returns {commands, notices, waiting, unanswered}: commands is a flat list of (id,
-- name, body_b64, attempt), those sent in this session before included (the
-- driver sends only the ones it does not hold: a reply lost to a timeout
-- must not strand them); notices the JSON outcomes to publish on the
-- device's result channel (SENT, EXPIRED, REJECTED), each also in KEYS[2];
-- waiting the number of commands left that this session was not sent (held
-- back by ARGV[3]: the driver asks again as the device answers); and
-- unanswered, the ids sent in this session still pending, those just sent
-- included (the driver's count of what its session holds starts again from
-- it, so a command that expired unanswered stops counting).
--
-- A command is sent when it was never sent, or was sent in another
-- session (one that ended before its result: at least once, with the same
-- id). Nothing is sent unless ARGV[2] is the registry's live session: a
-- session superseded meanwhile must not take commands its successor
-- already looked for.
local ledger, outcomes, device = KEYS[1], KEYS[2], KEYS[3]
local serial, session = ARGV[1], ARGV[2]
local max_in_flight, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local OUTCOMES_MAXLEN = 100000

local live = redis.call('HMGET', device, 'online', 'session')
if live[1] ~= '1' or live[2] ~= session then
  return {{}, {}, 0, {}}
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local notices = {}
local function outcome(command, status, extra)
  local notice = {['id'] = command, ['serial'] = serial, ['status'] = status, ['time_ms'] = now}
  for field, value in pairs(extra) do
    notice[field] = value
  end
  local json = cjson.encode(notice)
  redis.call('XADD', outcomes, 'MAXLEN', '~', OUTCOMES_MAXLEN, '*',
    'serial', serial, 'id', command, 'status', status, 'time_ms', now, 'notice', json)
  notices[#notices + 1] = json
end

-- The bytes base64 text decodes to.
local function decoded_length(b64)
  local padding = 0
  if string.sub(b64, -2) == '==' then
    padding = 2
  elseif string.sub(b64, -1) == '=' then
    padding = 1
  end
  return math.floor(#b64 * 3 / 4) - padding
end

local entries = {}
local fields = redis.call('HGETALL', ledger)
for i = 1, #fields, 2 do
  if fields[i] ~= 'seq' then
    local entry = cjson.decode(fields[i + 1])
    entry.id = fields[i]
    entries[#entries + 1] = entry
  end
end
table.sort(entries, function(a, b) return a['seq'] < b['seq'] end)

local commands = {}
local unanswered = {}
local in_flight = 0
local waiting = 0
for _, entry in ipairs(entries) do
  local id = entry.id
  if now >= entry['expires_ms'] then
    redis.call('HDEL', ledger, id)
    outcome(id, 'EXPIRED', {['attempt'] = entry['attempts']})
  elseif entry['state'] == 'SENT' and entry['session'] == session then
    -- Sent in this session already: handed again, with the same attempt,
    -- for the driver to send if it never got it (a reply lost to a
    -- timeout, the call retried); it skips the ones it has.
    in_flight = in_flight + 1
    unanswered[#unanswered + 1] = id
    commands[#commands + 1] = id
    commands[#commands + 1] = entry['name']
    commands[#commands + 1] = entry['body_b64']
    commands[#commands + 1] = entry['attempts']
  elseif in_flight < max_in_flight then
    local size = #entry['name'] + decoded_length(entry['body_b64'])
    if size > max_bytes then
      redis.call('HDEL', ledger, id)
      outcome(id, 'REJECTED', {['data'] = 'the command is ' .. size
        .. ' bytes of name and body, the device accepts at most ' .. max_bytes})
    else
      entry['state'] = 'SENT'
      entry['session'] = session
      entry['attempts'] = entry['attempts'] + 1
      entry.id = nil
      redis.call('HSET', ledger, id, cjson.encode(entry))
      commands[#commands + 1] = id
      commands[#commands + 1] = entry['name']
      commands[#commands + 1] = entry['body_b64']
      commands[#commands + 1] = entry['attempts']
      outcome(id, 'SENT', {['attempt'] = entry['attempts']})
      in_flight = in_flight + 1
      unanswered[#unanswered + 1] = id
    end
  else
    waiting = waiting + 1
  end
end
if redis.call('HLEN', ledger) == 1 then
  redis.call('DEL', ledger)
end
return {commands, notices, waiting, unanswered}
