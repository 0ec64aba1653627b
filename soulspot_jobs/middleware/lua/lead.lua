-- lead: take or keep a lease on KEYS[1] for ARGV[1] (the caller's token) for ARGV[2] ms.
-- Returns 1 when the caller holds the lease now, 0 when another caller holds it.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
