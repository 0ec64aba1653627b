-- admit: may a call run now? Takes a HALF_OPEN trial slot leased to ARGV[4] when one is free.
-- Turns an OPEN circuit whose timeout has passed into HALF_OPEN (lazily, on this first look).
-- In metrics_only mode the circuit never leaves CLOSED, so every call is admitted.
-- Verdict: "admitted" (CLOSED), "trial" (HALF_OPEN slot taken), "rejected" (retry_after > 0).
-- A disabled breaker admits everything and counts nothing.
if rec.mode == 'disabled' then return finish('admitted', 0) end
count('total_requests')
if rec.state == 'open' then
  if now < rec.open_until then
    count('total_rejections')
    return finish('rejected', positive(rec.open_until - now))
  end
  move('half_open')
end
if rec.state == 'half_open' then
  expire_trials()
  local n, first_end = trial_count()
  if n < cfg.half_open_max_calls then
    redis.call('HSET', key, 'trial:' .. token, num(now + cfg.trial_lease))
    changed = true
    return finish('trial', 0)
  end
  count('total_rejections')
  return finish('rejected', positive(math.min(cfg.half_open_retry_after, first_end - now)))
end
return finish('admitted', 0)
