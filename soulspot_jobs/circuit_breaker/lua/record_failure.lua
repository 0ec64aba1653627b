-- record_failure: a call failed. In CLOSED counts towards failure_threshold (a failure more than
-- reset_timeout after the previous one starts again at 1) and opens the circuit there; in
-- HALF_OPEN a failed trial reopens it for a fresh, possibly grown, timeout.
-- With ARGV[14] (hold_open) the circuit opens at once and stays OPEN at least that long.
-- A non-empty ARGV[15] (reason) becomes the breaker's reason. With a sliding window the failure
-- (slow when ARGV[22]) joins the window after ARGV[23] locally counted successes, and the rates
-- decide. In metrics_only mode an opening is only counted (would_opens) and reported.
if rec.mode == 'disabled' then return finish('ok', 0) end
count('total_failures')
add_batched_successes()
if transition[2] ~= '' then return finish('ok', 0) end  -- the batch decided already
if reason ~= '' and rec.reason ~= reason then set('reason', reason) end
if cfg.hold_open and rec.mode == 'metrics_only' then
  would_open(cfg.hold_open)
elseif cfg.hold_open then
  local hold_until = now + cfg.hold_open
  if rec.state ~= 'open' then
    set('open_until', hold_until)
    move('open', cfg.hold_open)
  elseif rec.open_until < hold_until then
    set('open_until', hold_until)
  end
elseif rec.state == 'closed' and windowed then
  if slow then window_add('F', 1) else window_add('f', 1) end
  judge_window(reason)
elseif rec.state == 'closed' then
  local pending = rec.failure_count
  if pending ~= 0 and now - rec.last_failure_at > cfg.reset_timeout then pending = 0 end
  set('failure_count', pending + 1)
  set('last_failure_at', now)
  if rec.failure_count >= cfg.failure_threshold then trip() end
elseif rec.state == 'half_open' and end_trial() then
  open(rec.reopens + 1)
end
return finish('ok', 0)
