-- Shared prelude of every breaker script; the backend prepends it to each operation's file.
--
-- Key layout: one hash per breaker, KEYS[1] = "<prefix>:<name>", fields
--   state            "closed" | "open" | "half_open" (absent = "closed")
--   failure_count    consecutive failures counted towards failure_threshold
--   last_failure_at  server time (seconds, float) of the last counted failure
--   open_until       server time at which an OPEN circuit starts admitting trials
--   reopens          failed trials in a row since the circuit last closed
--   trial_successes  successful trials in the current HALF_OPEN period
--   last_state_change, version (bumped by every change a local view must see)
--   total_requests, total_successes, total_failures, total_rejections
--   forced_until     server time until which an operator forced the circuit OPEN (0: not forced)
--   transitions:<state>  times the circuit moved into <state> ("open", "half_open", "closed")
--   trial:<token>    lease end of one HALF_OPEN trial slot
--   reason           why the circuit is not CLOSED (text; "" once it closes)
--   mode             the operator's mode: "" (normal), "disabled" or "metrics_only"
--   window           the sliding window's outcomes (text, see window.py; "" after a transition)
--   would_opens      openings metrics_only mode counted instead of making
-- A field that does not hold a number where one belongs (or holds NaN) is read as 0; a state
-- other than the three is neither OPEN nor HALF_OPEN, so calls are admitted as if CLOSED.
--
-- ARGV (same for every script):
--   [1] now: seconds as a float, or "" for the Redis server clock (TIME)
--   [2] pub/sub channel on which view changes are published, or "" for none
--   [3] breaker name (published with the change)
--   [4] trial token, or ""
--   [5] failure_threshold  [6] success_threshold  [7] timeout  [8] reset_timeout
--   [9] half_open_max_calls  [10] trial_lease  [11] half_open_retry_after
--   [12] timeout_multiplier  [13] max_timeout or ""  [14] hold_open seconds or ""
--        (force_open: the seconds to stay OPEN)
--   [15] reason: the failure's (record_failure) or the operator's (force_open), or "" for none
--   [16] sliding_window_type ("consecutive" | "count" | "time")  [17] sliding_window_size
--   [18] minimum_calls  [19] failure_rate_threshold  [20] slow_call_duration or ""
--   [21] slow_call_rate_threshold  [22] "1" when the reported call was slow, else ""
--   [23] successes this process counted locally, added to the window first (or "")
--   [24] the mode to set (set_mode), else ""
--
-- Every script returns {verdict, retry_after, from_state, to_state, open_for, now,
--   state, failure_count, last_failure_at, open_until, version, mode, would}, numbers as strings;
--   would is "1" when the transition is one metrics_only mode only would have made.

local key = KEYS[1]
local channel, name, token = ARGV[2], ARGV[3], ARGV[4]
local cfg = {
  failure_threshold = tonumber(ARGV[5]),
  success_threshold = tonumber(ARGV[6]),
  timeout = tonumber(ARGV[7]),
  reset_timeout = tonumber(ARGV[8]),
  half_open_max_calls = tonumber(ARGV[9]),
  trial_lease = tonumber(ARGV[10]),
  half_open_retry_after = tonumber(ARGV[11]),
  timeout_multiplier = tonumber(ARGV[12]),
  max_timeout = tonumber(ARGV[13]),
  hold_open = tonumber(ARGV[14]),
  window_type = ARGV[16] or 'consecutive',
  window_size = tonumber(ARGV[17]) or 100,
  minimum_calls = tonumber(ARGV[18]) or 10,
  failure_rate_threshold = tonumber(ARGV[19]) or 50,
  slow_call_duration = tonumber(ARGV[20]),
  slow_call_rate_threshold = tonumber(ARGV[21]) or 100,
}
local reason = ARGV[15] or ''
local slow = ARGV[22] == '1'
local batched = tonumber(ARGV[23]) or 0
local windowed = cfg.window_type == 'count' or cfg.window_type == 'time'
local MIN_RETRY_AFTER = 0.001

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function num(x)
  return string.format('%.17g', x)
end

-- A stored number as the scripts use it: one that does not parse (a hand edit) or is NaN counts
-- as 0, as the Python side reads it (RedisBackend's record_from_hash); inf stays inf.
local function number(text)
  local value = tonumber(text)
  if value == nil or value ~= value then return 0 end
  return value
end

-- The hash as HGETALL returned it (the snapshot script hands it back unchanged).
local raw_fields = redis.call('HGETALL', key)

-- Fields that hold text, not numbers.
local text_fields = {state = true, reason = true, mode = true, window = true}

local function load_record()
  local flat = raw_fields
  local rec = {
    state = 'closed', failure_count = 0, last_failure_at = 0, open_until = 0, reopens = 0,
    trial_successes = 0, last_state_change = 0, version = 0, forced_until = 0, trials = {},
    reason = '', mode = '', window = '', would_opens = 0,
  }
  for i = 1, #flat, 2 do
    local field, value = flat[i], flat[i + 1]
    if string.sub(field, 1, 6) == 'trial:' then
      rec.trials[string.sub(field, 7)] = number(value)
    elseif text_fields[field] then
      rec[field] = value
    else
      rec[field] = number(value)
    end
  end
  return rec
end

local rec = load_record()
local dirty = {}
local changed = false
local transition = {'', '', 0}
local would = ''

local function set(field, value)
  rec[field] = value
  dirty[field] = true
  changed = true
end

local function count(total)
  redis.call('HINCRBY', key, total, 1)
end

local function positive(seconds)
  if seconds < MIN_RETRY_AFTER then return MIN_RETRY_AFTER end
  return seconds
end

local function trial_count()
  local n, first_end = 0, nil
  for _, lease in pairs(rec.trials) do
    n = n + 1
    if not first_end or lease < first_end then first_end = lease end
  end
  return n, first_end
end

local function drop_trial(t)
  redis.call('HDEL', key, 'trial:' .. t)
  rec.trials[t] = nil
  changed = true
end

local function expire_trials()
  for t, lease in pairs(rec.trials) do
    if lease <= now then drop_trial(t) end
  end
end

-- Removes the caller's slot; true when it held a live one (so its outcome counts).
local function end_trial()
  expire_trials()
  if token == '' or not rec.trials[token] then return false end
  drop_trial(token)
  return true
end

local function move(state, open_for)
  transition = {rec.state, state, open_for or 0}
  set('state', state)
  set('last_state_change', now)
  set('trial_successes', 0)
  if rec.forced_until ~= 0 then set('forced_until', 0) end
  if rec.window ~= '' then set('window', '') end
  redis.call('HINCRBY', key, 'transitions:' .. state, 1)
  for t, _ in pairs(rec.trials) do drop_trial(t) end
end

local function open_duration(reopens)
  local duration = cfg.timeout * (cfg.timeout_multiplier ^ reopens)
  if cfg.max_timeout and duration > cfg.max_timeout then duration = cfg.max_timeout end
  return duration
end

local function open(reopens)
  local duration = open_duration(reopens)
  set('reopens', reopens)
  set('open_until', now + duration)
  move('open', duration)
end

local function close()
  set('failure_count', 0)
  set('reopens', 0)
  if rec.reason ~= '' then set('reason', '') end
  move('closed')
end

-- metrics_only: count the opening it would make and start counting afresh; stays CLOSED.
local function would_open(duration)
  set('would_opens', rec.would_opens + 1)
  set('failure_count', 0)
  if rec.window ~= '' then set('window', '') end
  transition = {'closed', 'open', duration}
  would = '1'
end

-- Opens the circuit from CLOSED, or in metrics_only mode says that it would have.
local function trip()
  if rec.mode == 'metrics_only' then
    would_open(open_duration(0))
  else
    open(0)
  end
end

-- The sliding window, as window.py keeps it: a count window is one character per call, oldest
-- first ("s", "f", "S" slow success, "F" slow failure); a time window is
-- "bucket,calls,failures,slow" entries joined by ";", oldest first.
local function bucket_width()
  return math.max(1, cfg.window_size / 60)
end

local function live_buckets(bucket)
  local oldest = bucket - math.ceil(cfg.window_size / bucket_width())
  local entries = {}
  for b, c, f, s in string.gmatch(rec.window, '(%-?%d+),(%d+),(%d+),(%d+)') do
    b = tonumber(b)
    if b > oldest then
      entries[#entries + 1] = {b, tonumber(c), tonumber(f), tonumber(s)}
    end
  end
  return entries
end

local function window_add(kind, n)
  if n <= 0 then return end
  if cfg.window_type == 'count' then
    local text = rec.window .. string.rep(kind, math.min(n, cfg.window_size))
    set('window', string.sub(text, -cfg.window_size))
    return
  end
  local bucket = math.floor(now / bucket_width())
  local entries = live_buckets(bucket)
  local failed, slowed = 0, 0
  if kind == 'f' or kind == 'F' then failed = n end
  if kind == 'S' or kind == 'F' then slowed = n end
  local last = entries[#entries]
  if last and last[1] == bucket then
    last[2], last[3], last[4] = last[2] + n, last[3] + failed, last[4] + slowed
  else
    entries[#entries + 1] = {bucket, n, failed, slowed}
  end
  local parts = {}
  for i, e in ipairs(entries) do
    parts[i] = string.format('%d,%d,%d,%d', e[1], e[2], e[3], e[4])
  end
  set('window', table.concat(parts, ';'))
end

local function occurrences(text, pattern)
  local _, n = string.gsub(text, pattern, '')
  return n
end

local function window_counts()
  if rec.window == '' or not windowed then return 0, 0, 0 end
  if cfg.window_type == 'count' then
    return string.len(rec.window), occurrences(rec.window, '[fF]'), occurrences(rec.window, '[SF]')
  end
  local calls, failures, slowed = 0, 0, 0
  for _, e in ipairs(live_buckets(math.floor(now / bucket_width()))) do
    calls, failures, slowed = calls + e[2], failures + e[3], slowed + e[4]
  end
  return calls, failures, slowed
end

-- Opens the circuit when the window's rates say so; the reason says which rate.
local function judge_window(failure_reason)
  local calls, failures, slowed = window_counts()
  if calls < cfg.minimum_calls then return end
  local why
  if failures * 100 >= cfg.failure_rate_threshold * calls then
    why = string.format('%d%% of the last %d calls failed', math.floor(failures * 100 / calls), calls)
    if failure_reason ~= '' then why = failure_reason .. ' (' .. why .. ')' end
  elseif cfg.slow_call_duration and slowed * 100 >= cfg.slow_call_rate_threshold * calls then
    why = string.format('%d%% of the last %d calls took %g s or more',
      math.floor(slowed * 100 / calls), calls, cfg.slow_call_duration)
  else
    return
  end
  set('reason', why)
  trip()
end

-- Successes a process counted locally: totals always, the window only while CLOSED.
local function add_batched_successes()
  if batched <= 0 then return end
  redis.call('HINCRBY', key, 'total_successes', batched)
  if rec.state == 'closed' and windowed then
    window_add('s', batched)
    judge_window('')
  end
end

-- Writes the changed fields, bumps the version, publishes the new view, returns the reply.
local function finish(verdict, retry_after)
  if changed then
    local args = {}
    for field, _ in pairs(dirty) do
      args[#args + 1] = field
      if text_fields[field] then
        args[#args + 1] = rec[field]
      else
        args[#args + 1] = num(rec[field])
      end
    end
    if #args > 0 then redis.call('HSET', key, unpack(args)) end
    rec.version = redis.call('HINCRBY', key, 'version', 1)
  end
  local view = {
    rec.state, num(rec.failure_count), num(rec.last_failure_at), num(rec.open_until),
    tostring(rec.version), rec.mode,
  }
  if changed and channel ~= '' then
    redis.call('PUBLISH', channel, cjson.encode({name, num(now), view[1], view[2], view[3], view[4], view[5], view[6]}))
  end
  return {
    verdict, num(retry_after or 0), transition[1], transition[2], num(transition[3]), num(now),
    view[1], view[2], view[3], view[4], view[5], view[6], would,
  }
end
