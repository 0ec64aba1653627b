-- heartbeat: one look by a live worker process, run every RECOVERY_INTERVAL.
--
-- KEYS[1]  Dramatiq's namespace ("soulspot:dramatiq"); the keys below are Dramatiq's own:
--          <ns>:__heartbeats__               sorted set: broker id -> last heartbeat (epoch ms)
--          <ns>:__acks__.<broker id>.<queue> set of the Redis ids a process fetched, unacked
--          <ns>:<queue>                      list of Redis ids;  <ns>:<queue>.msgs  id -> message
-- KEYS[2]  marker key, present while some worker process has looked at this Redis
-- ARGV[1]  this process's broker id   [2] now (epoch ms, the clock Dramatiq's heartbeats use)
--      [3]  heartbeat timeout (ms)     [4] marker time to live (ms)
--      [5…] every queue name, delay queues included
--
-- 1. Heartbeat for this process (Dramatiq's consumers do the same on every command, but a
--    process whose threads are all busy may issue none for a long time).
-- 2. Every other process silent for the timeout is dead: each message in its ack sets that
--    still exists goes back to the tail of its queue, the ack sets are deleted and the id leaves
--    the heartbeats set (a process that was only stalled adds itself again with its next
--    command). Every worker of this application declares all its queues, so ARGV names every
--    ack set a dead process can have.
-- 3. The marker is read and renewed: a process that saw it once and then finds it missing
--    knows Redis lost its data.
--
-- Returns {marker was present (0/1), messages requeued, dead processes with messages}.
local ns, marker = KEYS[1], KEYS[2]
local me, now, timeout, marker_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local heartbeats = ns .. ':__heartbeats__'

redis.call('ZADD', heartbeats, now, me)
local had_marker = redis.call('EXISTS', marker)
redis.call('SET', marker, '1', 'PX', marker_ttl)

local requeued, dead_with_messages = 0, 0
for _, worker in ipairs(redis.call('ZRANGEBYSCORE', heartbeats, 0, now - timeout)) do
  if worker ~= me then
    local found = 0
    for i = 5, #ARGV do
      local queue = ARGV[i]
      local acks = ns .. ':__acks__.' .. worker .. '.' .. queue
      local ids = redis.call('SMEMBERS', acks)
      for _, id in ipairs(ids) do
        if redis.call('HEXISTS', ns .. ':' .. queue .. '.msgs', id) == 1 then
          redis.call('RPUSH', ns .. ':' .. queue, id)
          found = found + 1
        end
      end
      if #ids > 0 then redis.call('DEL', acks) end
    end
    if found > 0 then dead_with_messages = dead_with_messages + 1 end
    requeued = requeued + found
    redis.call('ZREM', heartbeats, worker)
  end
end
return {had_marker, requeued, dead_with_messages}
