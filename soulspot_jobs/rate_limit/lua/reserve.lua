-- reserve: take the next free request slot of a shared rate limit, unless it is too far off.
--
-- Key layout: KEYS[1] = the limit's key, a string holding next_free: the earliest time (seconds
--   as a float, on the clock below) at which the next request may start. It expires (PX) the
--   moment next_free has passed, so an idle limit leaves no key behind.
--
-- ARGV:
--   [1] now: seconds as a float, or "" for the Redis server clock (TIME), shared by every host
--   [2] min_interval: seconds between two slots (> 0)
--   [3] max_wait: longest acceptable wait, in seconds (>= 0)
--
-- The slot is max(now, next_free). Returns {reserved, wait}, wait as a string of seconds
-- (Redis would truncate a Lua number to an integer):
--   reserved = 1: the slot is taken; start the request after `wait` seconds;
--   reserved = 0: the slot is more than max_wait away; nothing was reserved, and `wait` is
--                 how long until that slot.

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local min_interval = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])

local next_free = tonumber(redis.call('GET', KEYS[1])) or now
local slot = math.max(now, next_free)
local wait = slot - now
if wait > max_wait then
  return {0, string.format('%.17g', wait)}
end

local new_next_free = slot + min_interval
local ttl_ms = math.ceil((new_next_free - now) * 1000)
redis.call('SET', KEYS[1], string.format('%.17g', new_next_free), 'PX', ttl_ms)
return {1, string.format('%.17g', wait)}
