-- snapshot: read the breaker. Returns {now, {field, value, ...}}: the server time and the hash as
-- HGETALL gives it; the caller computes the effective state. Trial slots whose lease has ended
-- are deleted first (and the change published), so that a trial holder that died frees its slot
-- when anyone looks, not only when the next call asks to run.
expire_trials()
if changed then
  finish('ok', 0)
  raw_fields = redis.call('HGETALL', key)
end
return {num(now), raw_fields}
