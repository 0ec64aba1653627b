-- update_job: set fields of one job record, merge into its details, count an attempt, append
-- to its history and keep the unfinished index and the record's expiry in step, atomically
-- (JobStore.update). Needs _json.lua before it.
--
-- KEYS[1] the job's hash, KEYS[2] the sorted set of unfinished jobs.
-- ARGV[1] the job id (the member of KEYS[2])
-- ARGV[2] now: epoch seconds as JSON, written as updated_at and as the history entry's "at"
-- ARGV[3] the job's score in KEYS[2] if it stays unfinished (seconds: now, or the end of its
--         deferral when later)
-- ARGV[4] milliseconds a finished record is kept, or "" to keep it forever
-- ARGV[5] "1" to count an attempt (attempts + 1), else ""
-- ARGV[6] most entries the history keeps
-- ARGV[7] the final states, a JSON array of strings (a job in one keeps its state)
-- ARGV[8] JSON written as deferred_until when the new state is written, or "" (a new state
--         other than "deferred" clears the deferral, and its deferred_message_id, unless the
--         caller set deferred_until)
-- ARGV[9] a JSON object merged into details, or "" for none
-- ARGV[10] the state, as JSON, of a record no update writes ("cancelled": the job was stopped)
-- ARGV[11] "1" to write only a record in no final state, else ""
-- ARGV[12] a note as JSON, or "": the note of the history entry (appended even when nothing
--          else changes) unless a new last_error is its note
-- ARGV[13], ARGV[14], ... field name, JSON value; the fields to set (state, service, ...)
--
-- Returns 0 when there is no such record, 3 when the record is in the state of ARGV[10], 4 when
-- it is final and ARGV[11] is "1" (nothing is written in these three cases); else 1 when it was
-- updated, 2 when this update finished the job (its new state is final).

local job, unfinished = KEYS[1], KEYS[2]
local id, now, score, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local limit, finals, deferral_default, details = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9]
local frozen, only_unfinished, note = ARGV[10], ARGV[11] == '1', ARGV[12]

local record = redis.call('HMGET', job, 'state', 'service', 'last_error', 'attempts',
  'details', 'history')
local state = record[1]
if not state then return 0 end
if state == frozen then return 3 end
local service, last_error = record[2] or 'null', record[3] or 'null'
local was_final = among(state, finals)
if was_final and only_unfinished then return 4 end

local changes = {}
for i = 13, #ARGV, 2 do changes[ARGV[i]] = ARGV[i + 1] end
changes.updated_at = now
if was_final then
  changes.state = nil
elseif changes.state and deferral_default ~= '' then
  changes.deferred_until = deferral_default
  changes.deferred_message_id = 'null'
end
if details ~= '' then changes.details = merged(record[5] or '{}', details) end
if ARGV[5] == '1' then
  changes.attempts = string.format('%d', (tonumber(record[4]) or 0) + 1)
end

local to_state, to_service = changes.state or state, changes.service or service
local err = changes.last_error
local new_error = err ~= nil and err ~= 'null' and err ~= last_error
if to_state ~= state or to_service ~= service or new_error or note ~= '' then
  local said = 'null'
  if new_error then said = err elseif note ~= '' then said = note end
  local entry = history_entry(now, to_state, to_service, said)
  changes.history = appended(record[6] or '[]', entry, limit)
end

local fields = {}
for name, value in pairs(changes) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', job, unpack(fields))

local finishing = changes.state ~= nil and among(changes.state, finals)
if finishing then
  redis.call('ZREM', unfinished, id)
elseif not was_final then
  redis.call('ZADD', unfinished, score, id)
end
if ttl ~= '' and (finishing or was_final) then redis.call('PEXPIRE', job, ttl) end
if finishing then return 2 end
return 1
