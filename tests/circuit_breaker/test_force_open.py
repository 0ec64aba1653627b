"""Forcing a breaker OPEN for maintenance, and the transition counts, on each backend.

Like ``test_semantics.py``, every behavioural test runs once on the memory backend and once on
Redis, with time driven by the fake ``clock``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis
import structlog

from soulspot_jobs.circuit_breaker import (
    MAX_FORCE_OPEN,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    CircuitState,
    RedisBackend,
    validate_open_duration,
)
from soulspot_jobs.errors import ConfigurationError
from tests.polling import wait_until

from .conftest import REFRESH_INTERVAL, FakeClock

MakeBreaker = Callable[..., CircuitBreaker]

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class ServiceDown(Exception):
    """The guarded service failed."""


def ok() -> str:
    return "ok"


def fail() -> None:
    raise ServiceDown("down")


def test_force_open_refuses_calls_for_exactly_that_long_then_turns_half_open(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """Maintenance: the operator's period is the breaker's OPEN period, not the config timeout."""
    # Given a healthy CLOSED breaker whose own timeout is 60 s
    breaker = make_breaker(timeout=60.0)
    breaker.call_sync(ok)

    # When it is forced OPEN for 600 s
    breaker.force_open_sync(600)

    # Then calls are refused without running, with retry_after the time left of the 600 s
    ran = []
    with pytest.raises(CircuitBreakerError) as caught:
        breaker.call_sync(lambda: ran.append(1))
    assert ran == []
    assert caught.value.retry_after == pytest.approx(600.0)
    stats = breaker.stats
    assert stats.state is OPEN
    assert stats.forced_until == pytest.approx(clock.now + 600.0)

    # When 599 s pass, it is still OPEN; when the 600 s are over, it is HALF_OPEN and not forced
    clock.advance(599.0)
    assert breaker.stats.retry_after == pytest.approx(1.0)
    clock.advance(1.0)
    stats = breaker.stats
    assert stats.state is HALF_OPEN
    assert stats.forced_until is None

    # And a successful trial sequence closes it as usual
    breaker.call_sync(ok)
    breaker.call_sync(ok)
    assert breaker.state is CLOSED


def test_force_open_keeps_the_totals_and_failure_count(make_breaker: MakeBreaker) -> None:
    """Forcing OPEN is an operator's action, not an outcome: nothing is counted for it."""
    # Given a breaker with 1 success and 2 pending failures
    breaker = make_breaker(failure_threshold=5)
    breaker.call_sync(ok)
    for _ in range(2):
        with pytest.raises(ServiceDown):
            breaker.call_sync(fail)
    before = breaker.stats

    # When it is forced OPEN
    breaker.force_open_sync(30)

    # Then totals and the failure count are those from before
    after = breaker.stats
    assert (after.total_requests, after.total_successes, after.total_failures) == (
        before.total_requests,
        before.total_successes,
        before.total_failures,
    )
    assert after.failure_count == 2


def test_force_open_on_an_open_breaker_sets_the_operators_period(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """Already OPEN by failures: the operator's period replaces the rest of the timeout."""
    # Given a breaker opened by failures for 60 s
    breaker = make_breaker(failure_threshold=1, timeout=60.0)
    with pytest.raises(ServiceDown):
        breaker.call_sync(fail)
    assert breaker.stats.forced_until is None

    # When it is forced OPEN for 300 s
    breaker.force_open_sync(300.0)

    # Then it stays OPEN for 300 s from now, marked forced, with no second transition to OPEN
    stats = breaker.stats
    assert stats.retry_after == pytest.approx(300.0)
    assert stats.forced_until == pytest.approx(clock.now + 300.0)
    assert stats.transitions == {"open": 1}


def test_reset_ends_a_forced_open_period_early(make_breaker: MakeBreaker) -> None:
    """The operator's two switches: `open` for maintenance, `reset` when it is over."""
    # Given a breaker forced OPEN for an hour
    breaker = make_breaker()
    breaker.force_open_sync(3600)

    # When it is reset
    breaker.reset_sync()

    # Then it is CLOSED, no longer forced, and admits calls
    stats = breaker.stats
    assert stats.state is CLOSED
    assert stats.forced_until is None
    assert breaker.call_sync(ok) == "ok"


def test_transitions_are_counted_per_target_state(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """Monitoring counts every move: opened, half-opened, closed, forced open, reset."""
    # Given a fresh breaker that opens after 1 failure and closes after 1 successful trial
    breaker = make_breaker(failure_threshold=1, success_threshold=1, timeout=10.0)
    assert breaker.stats.transitions == {}

    # When it opens, turns HALF_OPEN, closes, is forced OPEN and then reset
    with pytest.raises(ServiceDown):
        breaker.call_sync(fail)
    clock.advance(10.0)
    breaker.call_sync(ok)
    breaker.force_open_sync(5)
    breaker.reset_sync()

    # Then each target state counts its transitions
    assert breaker.stats.transitions == {"open": 2, "half_open": 1, "closed": 2}


def test_force_open_is_logged_as_forced_open(make_breaker: MakeBreaker) -> None:
    """Maintenance shows in the logs, with breaker, state and how long."""
    # Given a CLOSED breaker
    breaker = make_breaker()

    # When it is forced OPEN for 120 s
    with structlog.testing.capture_logs() as logs:
        breaker.force_open_sync(120)

    # Then one forced_open event was logged at WARNING
    forced = [e for e in logs if e.get("event_name") == "circuit_breaker.forced_open"]
    assert len(forced) == 1
    assert forced[0]["log_level"] == "warning"
    assert forced[0]["circuit_breaker"] == "svc"
    assert forced[0]["state"] == "open"
    assert forced[0]["retry_after"] == 120.0
    assert forced[0]["event"] == "Circuit breaker svc was forced OPEN for 120.0 seconds."


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0"),
        (-5, "-5"),
        ("10", "'10'"),
        (True, "True"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (1e12, "1000000000000.0"),
        (MAX_FORCE_OPEN + 1, "604801.0"),
    ],
)
def test_force_open_rejects_a_period_that_is_not_a_positive_number_up_to_7_days(
    make_breaker: MakeBreaker, seconds: object, shown: str
) -> None:
    """A bad period is the caller's error, named with the range, and changes nothing: no
    period without end (inf) or beyond what a date can show (1e12 s) reaches the store."""
    # Given a CLOSED breaker
    breaker = make_breaker()

    # When it is forced OPEN for a bad period, Then a ValueError names the value and the range
    with pytest.raises(ConfigurationError) as caught:
        breaker.force_open_sync(seconds)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert message.endswith(f"got {shown}")
    assert "more than 0 and at most 604800 (7 days)" in message
    assert breaker.state is CLOSED


def test_the_validator_is_the_one_check_and_accepts_up_to_exactly_7_days(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """``validate_open_duration`` is public (the operators' page calls it) and returns the value."""
    # Given the validator, exported by the package
    # Then it returns good values as they are, and refuses what force_open refuses
    assert validate_open_duration(0.5) == 0.5
    assert validate_open_duration(MAX_FORCE_OPEN) == 604800.0
    with pytest.raises(ValueError, match="got inf"):
        validate_open_duration(float("inf"))

    # And a breaker may be forced OPEN for the whole 7 days
    breaker = make_breaker()
    breaker.force_open_sync(MAX_FORCE_OPEN)
    assert breaker.stats.forced_until == pytest.approx(clock.now + MAX_FORCE_OPEN)


def test_async_force_open_forces_the_circuit_open(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """The async twin does the same from an event loop."""
    # Given a CLOSED breaker
    breaker = make_breaker()

    # When it is forced OPEN from a coroutine
    asyncio.run(breaker.force_open(45))

    # Then it is OPEN for 45 s
    assert breaker.stats.retry_after == pytest.approx(45.0)


def test_every_process_local_view_follows_a_forced_open_at_once(
    redis_client: redis.Redis,
) -> None:
    """Cluster-wide: a worker answering from its local view refuses as soon as it is forced."""
    # Given two backends on one Redis (two processes), the worker's fast path live and CLOSED
    worker = RedisBackend(redis_client, refresh_interval=60.0)
    operator = RedisBackend(redis_client, local_view=False)
    try:
        config = CircuitBreakerConfig()
        worker_breaker = CircuitBreaker("svc", config, backend=worker)
        with pytest.raises(ServiceDown):  # one round trip builds the worker's view
            worker_breaker.call_sync(fail)
        assert worker._watcher is not None and worker._watcher.live.wait(5.0)
        worker_breaker.call_sync(ok)

        # When the operator forces it OPEN (the periodic refresh is a minute away)
        CircuitBreaker("svc", config, backend=operator).force_open_sync(900)

        # Then the worker's local view refuses calls, from the pub/sub message alone
        wait_until(lambda: worker._views["svc"].state is OPEN, "the worker's view to be OPEN")
        decision = worker.admit_locally("svc", config)
        assert decision is not None and decision.local
        assert decision.retry_after == pytest.approx(900.0, abs=5.0)
    finally:
        worker.close()
        operator.close()


def test_the_forced_open_hash_fields_are_documented_ones(redis_client: redis.Redis) -> None:
    """The Redis layout of a forced breaker: forced_until and a transitions counter."""
    # Given a Redis breaker
    backend = RedisBackend(redis_client, local_view=False, refresh_interval=REFRESH_INTERVAL)
    try:
        breaker = CircuitBreaker("svc", CircuitBreakerConfig(), backend=backend)

        # When it is forced OPEN
        breaker.force_open_sync(60)

        # Then its hash has the state, forced_until and open_until equal, and one transition
        raw = redis_client.hgetall(backend.key("svc"))
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        assert fields["state"] == "open"
        assert float(fields["forced_until"]) == float(fields["open_until"])
        assert fields["transitions:open"] == "1"
    finally:
        backend.close()
