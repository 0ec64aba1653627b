"""Failure-rate and slow-call windows, on each backend (memory and Redis).

A breaker with ``sliding_window_type`` ``count`` or ``time`` judges the share of failed (or slow)
calls among the last calls or seconds, not failures in a row; below ``minimum_calls`` it never
opens. The Redis backend counts healthy successes in the process and flushes them in batches,
so each test flushes before it looks (:func:`settle`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from soulspot_jobs.circuit_breaker import (
    Backend,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    RedisBackend,
)
from soulspot_jobs.errors import ConfigurationError
from tests.redis_stats import command_calls

from .conftest import FakeClock

MakeBreaker = Callable[..., CircuitBreaker]
CLOSED, OPEN = CircuitState.CLOSED, CircuitState.OPEN


class ServiceDown(Exception):
    """The guarded service failed."""


def fail() -> None:
    raise ServiceDown("down")


def succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.call_sync(lambda: None)


def fail_times(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ServiceDown):
            breaker.call_sync(fail)


def settle(backend: Backend) -> None:
    """Flush the successes a Redis backend counted locally (the memory backend has none)."""
    if isinstance(backend, RedisBackend):
        backend.flush_outcomes()


def count_window(**fields: object) -> dict[str, object]:
    return {
        "sliding_window_type": "count",
        "sliding_window_size": 10,
        "minimum_calls": 10,
        **fields,
    }


def test_a_count_window_never_opens_below_the_minimum_number_of_calls(
    make_breaker: MakeBreaker,
) -> None:
    breaker = make_breaker(**count_window())
    fail_times(breaker, 9)
    assert breaker.state is CLOSED
    assert breaker.stats.window_calls == 9 and breaker.stats.window_failures == 9
    fail_times(breaker, 1)
    stats = breaker.stats
    assert stats.state is OPEN
    assert stats.reason == "ServiceDown: down (100% of the last 10 calls failed)"


def test_a_count_window_opens_at_the_failure_rate_threshold(
    make_breaker: MakeBreaker, backend: Backend
) -> None:
    breaker = make_breaker(**count_window(failure_rate_threshold=50.0))
    succeed(breaker, 5)
    settle(backend)
    fail_times(breaker, 4)
    assert breaker.state is CLOSED  # 4 of 9: too few calls, and 44 %
    fail_times(breaker, 1)  # 5 of 10 = 50 %
    assert breaker.state is OPEN


def test_a_count_window_forgets_the_calls_that_slid_out_of_it(
    make_breaker: MakeBreaker, backend: Backend
) -> None:
    breaker = make_breaker(
        **count_window(sliding_window_size=4, minimum_calls=4, failure_rate_threshold=75.0)
    )
    fail_times(breaker, 2)
    succeed(breaker, 2)
    settle(backend)
    fail_times(breaker, 2)  # the window is now s s f f: 50 %, the first failures slid out
    stats = breaker.stats
    assert stats.state is CLOSED and (stats.window_calls, stats.window_failures) == (4, 2)
    fail_times(breaker, 1)  # s f f f: 75 %
    assert breaker.state is OPEN


def test_successes_never_open_a_window_and_healthy_traffic_keeps_it_closed(
    make_breaker: MakeBreaker, backend: Backend
) -> None:
    breaker = make_breaker(**count_window(sliding_window_size=20, minimum_calls=20))
    for _ in range(10):
        succeed(breaker, 3)
        settle(backend)
        fail_times(breaker, 1)
    stats = breaker.stats
    assert stats.state is CLOSED
    assert (stats.window_calls, stats.window_failures) == (20, 5)
    assert stats.total_successes == 30 and stats.total_failures == 10


def test_a_time_window_counts_only_the_last_seconds(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    breaker = make_breaker(sliding_window_type="time", sliding_window_size=10, minimum_calls=3)
    fail_times(breaker, 2)
    clock.advance(11)  # both failures are older than the window now
    fail_times(breaker, 1)
    stats = breaker.stats
    assert stats.state is CLOSED and stats.window_calls == 1
    fail_times(breaker, 2)
    assert breaker.state is OPEN


def test_a_wide_time_window_keeps_its_buckets_across_the_whole_window(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    breaker = make_breaker(sliding_window_type="time", sliding_window_size=600, minimum_calls=3)
    fail_times(breaker, 2)
    clock.advance(500)
    assert breaker.stats.window_calls == 2
    clock.advance(120)
    assert breaker.stats.window_calls == 0


def test_slow_calls_open_the_circuit_at_the_slow_call_rate(
    make_breaker: MakeBreaker, backend: Backend
) -> None:
    breaker = make_breaker(
        **count_window(sliding_window_size=4, minimum_calls=4),
        slow_call_duration=0.05,
        slow_call_rate_threshold=50.0,
    )
    succeed(breaker, 2)
    settle(backend)
    for _ in range(2):
        breaker.call_sync(time.sleep, 0.06)  # answers, but slower than slow_call_duration
    stats = breaker.stats
    assert stats.state is OPEN
    assert stats.reason == "50% of the last 4 calls took 0.05 s or more"


def test_a_slow_trial_counts_as_a_failed_trial(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(
        **count_window(sliding_window_size=2, minimum_calls=2), slow_call_duration=0.05, timeout=5.0
    )
    fail_times(breaker, 2)
    assert breaker.state is OPEN
    clock.advance(5)
    breaker.call_sync(time.sleep, 0.06)
    stats = breaker.stats
    assert stats.state is OPEN and stats.reopens == 1
    assert stats.reason == "trial call took 0.05 s or more"


def test_every_transition_empties_the_window(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(**count_window(sliding_window_size=2, minimum_calls=2), timeout=5.0)
    fail_times(breaker, 2)
    clock.advance(5)
    succeed(breaker, 2)  # two successful trials close it again
    stats = breaker.stats
    assert stats.state is CLOSED and stats.window_calls == 0
    fail_times(breaker, 1)
    assert breaker.state is CLOSED  # one failure of a fresh window: below minimum_calls


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"slow_call_duration": 1.0}, "slow_call_duration (1.0) needs a sliding window"),
        (count_window(minimum_calls=11), "minimum_calls (11) must not be above"),
        ({"failure_rate_threshold": 0}, "failure_rate_threshold=0"),
        ({"failure_rate_threshold": 101}, "failure_rate_threshold=101"),
        ({"sliding_window_type": "ring"}, "sliding_window_type='ring'"),
    ],
)
def test_a_window_config_that_cannot_work_is_refused(fields: dict, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words.replace("(", r"\(").replace(")", r"\)")):
        CircuitBreakerConfig(**fields)


def test_a_healthy_call_with_a_window_costs_at_most_a_twentieth_of_a_round_trip(
    redis_client: redis.Redis,
) -> None:
    # Given a worker whose local view is live
    backend = RedisBackend(redis_client, refresh_interval=0.2, outcome_flush_interval=0.05)
    breaker = CircuitBreaker("healthy", CircuitBreakerConfig(**count_window()), backend=backend)
    try:
        breaker.call_sync(lambda: None)
        assert backend._watcher is not None and backend._watcher.live.wait(10)
        redis_client.config_resetstat()
        # When 2,000 calls succeed
        started = time.monotonic()
        succeed(breaker, 2000)
        elapsed = time.monotonic() - started
        backend.flush_outcomes()
        # Then they cost a few batched scripts, not one each, and every one is counted
        scripts = command_calls(redis_client)["evalsha"]
        assert scripts <= 2000 * 0.05, (scripts, elapsed)
        assert breaker.stats.total_successes == 2001
    finally:
        backend.close()
