"""Whatever a breaker hash holds, it is read without a crash, and the same way by Python and by
the Lua scripts: an older version's ``open_until`` of ``inf`` or ``1e15``, or a hand edit."""

from __future__ import annotations

import pytest
import redis

from soulspot_jobs.circuit_breaker import (
    MAX_FORCE_OPEN,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    CircuitState,
    RedisBackend,
)

from .conftest import FakeClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


def _breaker(
    client: redis.Redis, clock: FakeClock, fields: dict[str, str]
) -> tuple[CircuitBreaker, RedisBackend]:
    """A breaker on Redis whose hash was written with ``fields`` by someone else."""
    backend = RedisBackend(client, clock=clock, local_view=False)
    client.hset(backend.key("svc"), mapping=fields)
    return CircuitBreaker("svc", CircuitBreakerConfig(), backend=backend), backend


@pytest.mark.parametrize("open_until", ["inf", "1e15"])
def test_an_open_period_without_end_is_shown_and_refused_with_at_most_7_days(
    redis_client: redis.Redis, clock: FakeClock, open_until: str
) -> None:
    # Given a hash forced OPEN until inf or 1e15 (an older version accepted --for inf)
    fields = {"state": "open", "open_until": open_until, "forced_until": open_until}
    breaker, backend = _breaker(redis_client, clock, fields)
    try:
        # When its stats are read, Then it is OPEN, forced, and retry_after is at most 7 days
        stats = breaker.stats
        assert stats.state is OPEN
        assert stats.forced_until == float(open_until)
        assert stats.retry_after == MAX_FORCE_OPEN

        # And a call is refused with a retry_after a deferral can use (no OverflowError)
        with pytest.raises(CircuitBreakerError) as refused:
            breaker.call_sync(lambda: None)
        assert refused.value.retry_after == MAX_FORCE_OPEN
        assert refused.value.delay == MAX_FORCE_OPEN * 1000

        # And a reset still ends it
        breaker.reset_sync()
        assert breaker.stats.state is CLOSED
    finally:
        backend.close()


def test_fields_that_hold_no_number_read_as_0_and_an_unknown_state_as_closed(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    # Given a hand-edited hash: words where numbers belong, NaN, and a state no script writes
    fields = {
        "state": "banana",
        "failure_count": "many",
        "open_until": "nan",
        "total_requests": "12",
        "total_failures": "x",
        "transitions:open": "nan",
        "trial:abc": "zzz",
        "last_state_change": "yesterday",
    }
    breaker, backend = _breaker(redis_client, clock, fields)
    try:
        # When its stats are read, Then every unreadable number is 0, the state CLOSED
        stats = breaker.stats
        assert stats.state is CLOSED
        assert (stats.failure_count, stats.total_failures, stats.last_state_change) == (0, 0, 0)
        assert stats.total_requests == 12
        assert stats.transitions == {"open": 0}
        # And the scripts agree: a call is admitted (as in CLOSED), and counted
        assert breaker.call_sync(lambda: "ran") == "ran"
        assert breaker.stats.total_requests == 13
    finally:
        backend.close()


def test_an_open_hash_with_an_unreadable_open_until_lets_trials_through(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    # Given an OPEN hash whose open_until is no number
    breaker, backend = _breaker(redis_client, clock, {"state": "open", "open_until": "soon"})
    try:
        # Then it reads as an OPEN period that ended (0): HALF_OPEN, and a call is a trial
        assert breaker.stats.state is HALF_OPEN
        breaker.call_sync(lambda: None)
        assert breaker.stats.transitions.get("half_open") == 1
    finally:
        backend.close()
