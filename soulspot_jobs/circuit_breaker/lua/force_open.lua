-- force_open: an operator's maintenance switch. The circuit goes OPEN now for exactly ARGV[14]
-- seconds, whatever its state (a transition only when it was not OPEN already), then ends like any
-- OPEN period (HALF_OPEN, trials). forced_until records that the OPEN state is the operator's;
-- the next transition clears it. Totals and the failure count are kept.
local seconds = cfg.hold_open
if rec.state ~= 'open' then move('open', seconds) end
set('open_until', now + seconds)
set('forced_until', now + seconds)
if rec.mode ~= '' then set('mode', '') end  -- forced_open replaces any other mode
if reason ~= '' then set('reason', reason) end
return finish('ok', 0)
