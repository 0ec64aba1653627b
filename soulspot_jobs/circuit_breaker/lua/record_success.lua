-- record_success: a call succeeded. Clears pending failures in CLOSED; in HALF_OPEN counts the
-- trial ARGV[4] (if its lease is live) and closes the circuit at success_threshold.
-- With a sliding window it is added to the window after ARGV[23] locally counted successes, and a
-- slow one (ARGV[22]) may open the circuit by the slow-call rate; a slow trial counts as failed.
-- Outcomes of calls that were not trials change nothing while OPEN or HALF_OPEN.
if rec.mode == 'disabled' then return finish('ok', 0) end
count('total_successes')
add_batched_successes()
if transition[2] ~= '' then return finish('ok', 0) end  -- the batch decided already
if rec.state == 'closed' then
  if windowed then
    if slow then window_add('S', 1) else window_add('s', 1) end
    judge_window('')
  elseif rec.failure_count ~= 0 then
    set('failure_count', 0)
  end
elseif rec.state == 'half_open' and end_trial() then
  if slow and cfg.slow_call_duration then
    set('reason', string.format('trial call took %g s or more', cfg.slow_call_duration))
    open(rec.reopens + 1)
  else
    set('trial_successes', rec.trial_successes + 1)
    if rec.trial_successes >= cfg.success_threshold then close() end
  end
end
return finish('ok', 0)
