"""Operating modes, set by an operator for every process: disabled, metrics_only, forced_open,
normal. Each test runs once per backend (memory and Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import structlog

from soulspot_jobs.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
)
from soulspot_jobs.errors import ConfigurationError

from .conftest import FakeClock

MakeBreaker = Callable[..., CircuitBreaker]
CLOSED, OPEN = CircuitState.CLOSED, CircuitState.OPEN


class ServiceDown(Exception):
    """The guarded service failed."""


def fail() -> None:
    raise ServiceDown("down")


def fail_times(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ServiceDown):
            breaker.call_sync(fail)


def test_a_disabled_breaker_admits_every_call_and_counts_nothing(
    make_breaker: MakeBreaker,
) -> None:
    breaker = make_breaker(failure_threshold=2)
    fail_times(breaker, 2)
    assert breaker.state is OPEN

    breaker.set_mode_sync("disabled")  # closes it, and from now on nothing counts

    stats = breaker.stats
    assert (stats.state, stats.mode) == (CLOSED, "disabled")
    fail_times(breaker, 10)
    assert breaker.call_sync(lambda: "ran") == "ran"
    stats = breaker.stats
    assert stats.state is CLOSED
    assert (stats.total_failures, stats.total_successes, stats.total_requests) == (2, 0, 2)


def test_metrics_only_counts_and_logs_the_opening_it_would_make_but_never_refuses(
    make_breaker: MakeBreaker,
) -> None:
    breaker = make_breaker(failure_threshold=3)
    breaker.set_mode_sync("metrics_only")
    with structlog.testing.capture_logs() as logs:
        fail_times(breaker, 7)
    stats = breaker.stats
    assert (stats.state, stats.mode) == (CLOSED, "metrics_only")
    assert stats.would_opens == 2  # at the 3rd and the 6th failure: it starts counting afresh
    assert stats.total_failures == 7 and stats.transitions.get("open", 0) == 0
    would = [e for e in logs if e.get("event_name") == "circuit_breaker.would_open"]
    assert len(would) == 2 and would[0]["mode"] == "metrics_only"
    assert not [e for e in logs if e.get("event_name") == "circuit_breaker.blocked"]


def test_metrics_only_does_not_refuse_when_the_service_asks_to_wait(
    make_breaker: MakeBreaker,
) -> None:
    breaker = make_breaker()
    breaker.set_mode_sync("metrics_only")
    permit = breaker.acquire_sync()
    transition = breaker.record_failure_sync(permit, hold_open=30.0)
    assert transition is not None and transition.would
    assert breaker.acquire_sync() is not None
    assert breaker.stats.would_opens == 1


def test_metrics_only_judges_a_failure_rate_window_too(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(sliding_window_type="count", sliding_window_size=4, minimum_calls=4)
    breaker.set_mode_sync("metrics_only")
    fail_times(breaker, 4)
    stats = breaker.stats
    assert stats.state is CLOSED and stats.would_opens == 1 and stats.window_calls == 0


def test_forced_open_refuses_for_its_period_and_normal_ends_it(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    breaker = make_breaker()
    breaker.set_mode_sync("metrics_only")
    breaker.set_mode_sync("forced_open", seconds=120.0)  # replaces metrics_only
    stats = breaker.stats
    assert (stats.state, stats.mode) == (OPEN, "forced_open")
    with pytest.raises(CircuitBreakerError) as refused:
        breaker.acquire_sync()
    assert refused.value.retry_after == pytest.approx(120.0, abs=0.01)

    breaker.set_mode_sync("normal")

    stats = breaker.stats
    assert (stats.state, stats.mode) == (CLOSED, "normal")
    breaker.call_sync(lambda: None)


def test_normal_mode_leaves_an_opening_by_failures_alone(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(failure_threshold=1)
    fail_times(breaker, 1)
    breaker.set_mode_sync("normal")
    assert breaker.state is OPEN  # only an operator's forced period is ended by "normal"


@pytest.mark.parametrize(("mode", "seconds"), [("off", None), ("forced_open", None)])
def test_an_unknown_mode_or_a_forced_open_without_period_is_refused(
    make_breaker: MakeBreaker, mode: str, seconds: float | None
) -> None:
    breaker = make_breaker()
    with pytest.raises(ConfigurationError):
        breaker.set_mode_sync(mode, seconds=seconds)
    assert breaker.stats.mode == "normal"


def test_modes_are_set_from_async_code_too(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker()
    asyncio.run(breaker.set_mode("disabled"))
    assert breaker.stats.mode == "disabled"
