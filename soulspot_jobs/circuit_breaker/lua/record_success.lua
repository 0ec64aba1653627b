-- record_success: a call succeeded. Clears pending failures in CLOSED; in HALF_OPEN counts the
-- trial ARGV[4] (if its lease is live) and closes the circuit at success_threshold.
-- Outcomes of calls that were not trials change nothing while OPEN or HALF_OPEN.
count('total_successes')
if rec.state == 'closed' then
  if rec.failure_count ~= 0 then set('failure_count', 0) end
elseif rec.state == 'half_open' and end_trial() then
  set('trial_successes', rec.trial_successes + 1)
  if rec.trial_successes >= cfg.success_threshold then close() end
end
return finish('ok', 0)
