-- set_mode: the operator's mode ARGV[24] for every process: "normal", "disabled" or
-- "metrics_only". Disabling or watching starts from a CLOSED circuit with nothing counted;
-- "normal" also ends an operator's forced OPEN period.
local mode = ARGV[24]
if mode == 'normal' then mode = '' end
local forced = rec.state == 'open' and now < rec.forced_until
if rec.mode ~= mode or (forced and mode == '') then
  set('mode', mode)
  if mode ~= '' or forced then
    if rec.state ~= 'closed' then
      close()
    else
      if rec.failure_count ~= 0 then set('failure_count', 0) end
      if rec.window ~= '' then set('window', '') end
    end
  end
end
return finish('ok', 0)
