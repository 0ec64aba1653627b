-- record_outcomes: successes of ordinary calls a process counted locally, flushed in a batch
-- (ARGV[23]): totals always, the sliding window only while CLOSED. They may complete
-- minimum_calls and so open the circuit by rate.
if rec.mode == 'disabled' then return finish('ok', 0) end
add_batched_successes()
return finish('ok', 0)
