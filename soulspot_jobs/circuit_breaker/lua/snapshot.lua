-- snapshot: read the breaker without changing it. Returns {now, {field, value, ...}}: the
-- server time and the hash as HGETALL gives it; the caller computes the effective state.
return {num(now), raw_fields}
