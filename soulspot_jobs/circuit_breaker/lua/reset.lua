-- reset: force the circuit CLOSED with no pending failures; totals are kept.
if rec.state ~= 'closed' or rec.failure_count ~= 0 then close() end
return finish('ok', 0)
