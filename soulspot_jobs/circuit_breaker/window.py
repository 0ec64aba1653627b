"""The sliding window of a breaker that judges failures by rate, kept as text in its record.

A window is one string, so that the Redis backend keeps it in one field of the breaker's hash
and its Lua scripts (``window_*`` in ``lua/_lib.lua``) read and write it exactly as this module
does:

- ``count`` window: one character per call, oldest first, at most ``sliding_window_size`` of
  them — ``s`` success, ``f`` failure, ``S`` slow success, ``F`` slow failure.
- ``time`` window: ``bucket,calls,failures,slow`` entries joined by ``;``, oldest first, where
  ``bucket`` is ``floor(now / bucket_width)``; buckets older than the window are dropped.

Every transition empties the window: a circuit that closes again starts judging afresh.
"""

from __future__ import annotations

import math

from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig

SUCCESS, FAILURE, SLOW_SUCCESS, SLOW_FAILURE = "s", "f", "S", "F"


def outcome(*, failed: bool, slow: bool) -> str:
    """The character of one call's outcome."""
    if failed:
        return SLOW_FAILURE if slow else FAILURE
    return SLOW_SUCCESS if slow else SUCCESS


def add(window: str, config: CircuitBreakerConfig, now: float, kind: str, count: int = 1) -> str:
    """``window`` with ``count`` outcomes of ``kind`` (one of the four characters) added at
    ``now``."""
    if count <= 0:
        return window
    size = config.sliding_window_size
    if config.sliding_window_type == "count":
        return (window + kind * min(count, size))[-size:]
    bucket = math.floor(now / config.bucket_width)
    entries = _live_buckets(window, config, bucket)
    failed = count if kind in (FAILURE, SLOW_FAILURE) else 0
    slow = count if kind in (SLOW_SUCCESS, SLOW_FAILURE) else 0
    if entries and entries[-1][0] == bucket:
        _, calls, failures, slows = entries[-1]
        entries[-1] = (bucket, calls + count, failures + failed, slows + slow)
    else:
        entries.append((bucket, count, failed, slow))
    return ";".join(f"{b},{c},{f},{s}" for b, c, f, s in entries)


def counts(window: str, config: CircuitBreakerConfig, now: float) -> tuple[int, int, int]:
    """``(calls, failures, slow calls)`` in ``window`` at ``now``."""
    if not window or not config.windowed:
        return (0, 0, 0)
    if config.sliding_window_type == "count":
        failures = window.count(FAILURE) + window.count(SLOW_FAILURE)
        slow = window.count(SLOW_SUCCESS) + window.count(SLOW_FAILURE)
        return (len(window), failures, slow)
    entries = _live_buckets(window, config, math.floor(now / config.bucket_width))
    return (
        sum(e[1] for e in entries),
        sum(e[2] for e in entries),
        sum(e[3] for e in entries),
    )


def verdict(window: str, config: CircuitBreakerConfig, now: float, reason: str = "") -> str | None:
    """Why the window opens the circuit at ``now``, or ``None`` while it does not: below
    ``minimum_calls`` it never does; at or above ``failure_rate_threshold`` percent failed calls
    (the reason: ``reason`` with the rate), or ``slow_call_rate_threshold`` percent slow ones."""
    calls, failures, slow = counts(window, config, now)
    if calls < config.minimum_calls:
        return None
    if failures * 100 >= config.failure_rate_threshold * calls:
        rate = f"{failures * 100 // calls}% of the last {calls} calls failed"
        return f"{reason} ({rate})" if reason else rate
    if config.slow_call_duration is not None and slow * 100 >= (
        config.slow_call_rate_threshold * calls
    ):
        return (
            f"{slow * 100 // calls}% of the last {calls} calls took "
            f"{config.slow_call_duration:g} s or more"
        )
    return None


def _live_buckets(
    window: str, config: CircuitBreakerConfig, bucket: int
) -> list[tuple[int, int, int, int]]:
    """The time window's buckets that still count at ``bucket`` (the current one)."""
    oldest = bucket - math.ceil(config.sliding_window_size / config.bucket_width)
    entries = []
    for entry in window.split(";") if window else ():
        parts = entry.split(",")
        if len(parts) != 4:
            continue
        try:
            b, calls, failures, slow = (int(p) for p in parts)
        except ValueError:
            continue
        if b > oldest:
            entries.append((b, calls, failures, slow))
    return entries
