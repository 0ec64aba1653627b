-- record_failure: a call failed. In CLOSED counts towards failure_threshold (a failure more than
-- reset_timeout after the previous one starts again at 1) and opens the circuit there; in
-- HALF_OPEN a failed trial reopens it for a fresh, possibly grown, timeout.
-- With ARGV[14] (hold_open) the circuit opens at once and stays OPEN at least that long.
-- A non-empty ARGV[15] (reason) becomes the breaker's reason.
count('total_failures')
if reason ~= '' and rec.reason ~= reason then set('reason', reason) end
if cfg.hold_open then
  local hold_until = now + cfg.hold_open
  if rec.state ~= 'open' then
    set('open_until', hold_until)
    move('open', cfg.hold_open)
  elseif rec.open_until < hold_until then
    set('open_until', hold_until)
  end
elseif rec.state == 'closed' then
  local pending = rec.failure_count
  if pending ~= 0 and now - rec.last_failure_at > cfg.reset_timeout then pending = 0 end
  set('failure_count', pending + 1)
  set('last_failure_at', now)
  if rec.failure_count >= cfg.failure_threshold then open(0) end
elseif rec.state == 'half_open' and end_trial() then
  open(rec.reopens + 1)
end
return finish('ok', 0)
