-- reopen_job: take a job out of a final or stale state back to queued, atomically
-- (JobStore.reopen). Needs _json.lua before it.
--
-- KEYS[1] the job's hash, KEYS[2] the sorted set of unfinished jobs.
-- ARGV[1] the job id (the member of KEYS[2])
-- ARGV[2] now: epoch seconds as JSON (updated_at, the history entry's "at", the score)
-- ARGV[3] the note, as JSON: written as last_error and as the history entry's note
-- ARGV[4] most entries the history keeps
-- ARGV[5] the state it goes back to, as JSON ("queued")
-- ARGV[6] the states it never leaves, a JSON array ("done": its work is complete;
--         "cancelled": an operator stopped it)
--
-- Returns 1 when the job was reopened; 0 when there is no such record or it is in one of those
-- states (nothing is written then). A reopened record no longer expires.

local job, unfinished = KEYS[1], KEYS[2]
local id, now, note, limit, queued = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]

local record = redis.call('HMGET', job, 'state', 'service', 'history')
if not record[1] or among(record[1], ARGV[6]) then return 0 end
local entry = history_entry(now, queued, record[2] or 'null', note)
redis.call('HSET', job, 'state', queued, 'last_error', note, 'deferred_until', 'null',
  'updated_at', now, 'history', appended(record[3] or '[]', entry, limit))
redis.call('ZADD', unfinished, now, id)
redis.call('PERSIST', job)
return 1
