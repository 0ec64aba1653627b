"""The circuit breaker's documented behaviour, run once on each backend (memory and Redis).

Every test drives time with the fake ``clock`` fixture, so timeouts pass instantly and
``retry_after`` values are exact (up to float rounding through Redis).
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Callable

import pytest
import redis
import structlog

from soulspot_jobs.circuit_breaker import (
    Backend,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    CircuitState,
    RedisBackend,
    circuit_breaker,
)
from soulspot_jobs.errors import ConfigurationError

from .conftest import FakeClock

MakeBreaker = Callable[..., CircuitBreaker]

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class ServiceDown(Exception):
    """The guarded service failed (counts as a failure by default)."""


class NotFound(Exception):
    """An answer of the service that says nothing about its health (excluded in some tests)."""


def fail() -> None:
    raise ServiceDown("down")


def ok() -> str:
    return "ok"


def fail_times(breaker: CircuitBreaker, times: int) -> None:
    """Make ``times`` failing calls through ``breaker``."""
    for _ in range(times):
        with pytest.raises(ServiceDown):
            breaker.call_sync(fail)


def open_breaker(breaker: CircuitBreaker) -> None:
    """Fail enough calls to open ``breaker``."""
    fail_times(breaker, breaker.config.failure_threshold)
    assert breaker.state is OPEN


def half_open_breaker(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Open ``breaker`` and let its timeout pass."""
    open_breaker(breaker)
    clock.advance(breaker.config.timeout)
    assert breaker.state is HALF_OPEN


# -- CLOSED ------------------------------------------------------------------------------------


def test_circuit_opens_after_exactly_failure_threshold_consecutive_failures(
    make_breaker: MakeBreaker,
) -> None:
    """The design's rule: failure_threshold failures in a row open the circuit, not one fewer."""
    # Given a breaker that opens after 3 failures
    breaker = make_breaker(failure_threshold=3)

    # When 2 calls fail
    fail_times(breaker, 2)

    # Then it is still CLOSED with 2 failures counted
    assert breaker.stats.state is CLOSED
    assert breaker.stats.failure_count == 2

    # When the third call fails
    fail_times(breaker, 1)

    # Then it is OPEN
    assert breaker.state is OPEN


def test_a_success_resets_the_failure_count(make_breaker: MakeBreaker) -> None:
    """Failures must be consecutive: one success in between starts the count again."""
    # Given a breaker with 2 of 3 failures counted
    breaker = make_breaker(failure_threshold=3)
    fail_times(breaker, 2)

    # When a call succeeds
    assert breaker.call_sync(ok) == "ok"

    # Then no failures are pending, and 2 more failures do not open the circuit
    assert breaker.stats.failure_count == 0
    fail_times(breaker, 2)
    assert breaker.state is CLOSED


def test_a_failure_after_more_than_reset_timeout_restarts_the_count_at_one(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """Failures far apart are unrelated: older ones lapse after reset_timeout."""
    # Given 2 of 3 failures counted
    breaker = make_breaker(failure_threshold=3, reset_timeout=100.0)
    fail_times(breaker, 2)

    # When the next failure comes just over reset_timeout after the previous one
    clock.advance(100.001)
    fail_times(breaker, 1)

    # Then the count restarted at 1 and the circuit stays CLOSED
    stats = breaker.stats
    assert stats.state is CLOSED
    assert stats.failure_count == 1


def test_a_failure_exactly_reset_timeout_after_the_previous_still_counts(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """Failures lapse only *more* than reset_timeout after the previous one."""
    # Given 2 of 3 failures counted
    breaker = make_breaker(failure_threshold=3, reset_timeout=100.0)
    fail_times(breaker, 2)

    # When the next failure comes exactly reset_timeout later
    clock.advance(100.0)
    fail_times(breaker, 1)

    # Then it is the third in a row and opens the circuit
    assert breaker.state is OPEN


# -- OPEN --------------------------------------------------------------------------------------


def test_an_open_circuit_rejects_without_calling_fn_with_the_time_left_as_retry_after(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """OPEN protects the service: fn never runs, and the caller learns when to come back."""
    # Given an OPEN breaker with a 60 s timeout, 20 s into it
    breaker = make_breaker(failure_threshold=2, timeout=60.0)
    open_breaker(breaker)
    clock.advance(20.0)
    calls = []

    # When a call is made
    with pytest.raises(CircuitBreakerError) as caught:
        breaker.call_sync(calls.append, "ran")

    # Then fn was not called and retry_after is the 40 s left
    assert calls == []
    assert caught.value.retry_after == pytest.approx(40.0)
    assert caught.value.state is OPEN
    assert caught.value.service_name == "svc"
    assert breaker.stats.retry_after == pytest.approx(40.0)


def test_an_open_circuit_turns_half_open_lazily_once_the_timeout_has_passed(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """No timer thread exists: the next look after the timeout sees HALF_OPEN."""
    # Given an OPEN breaker
    breaker = make_breaker(failure_threshold=1, timeout=30.0)
    open_breaker(breaker)

    # When just under the timeout has passed, Then it is still OPEN
    clock.advance(29.999)
    assert breaker.stats.state is OPEN

    # When the timeout has passed, with no call made
    clock.advance(0.001)

    # Then stats already show HALF_OPEN, with no retry_after
    stats = breaker.stats
    assert stats.state is HALF_OPEN
    assert stats.retry_after is None


def test_outcomes_of_ordinary_calls_change_nothing_while_open(make_breaker: MakeBreaker) -> None:
    """A call admitted in CLOSED that reports after the circuit opened must not move it."""
    # Given a permit taken while CLOSED, and then the circuit opened by other calls
    breaker = make_breaker(failure_threshold=1)
    late_success = breaker.acquire_sync()
    late_failure = breaker.acquire_sync()
    open_breaker(breaker)

    # When both report late
    breaker.record_success_sync(late_success)
    breaker.record_failure_sync(late_failure)

    # Then the circuit is still OPEN and the outcomes were only totalled
    stats = breaker.stats
    assert stats.state is OPEN
    assert stats.total_successes == 1
    assert stats.total_failures == 2


# -- HALF_OPEN ---------------------------------------------------------------------------------


def test_at_most_half_open_max_calls_trials_run_at_once(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """HALF_OPEN probes the service with a few calls; the rest are refused briefly."""
    # Given a HALF_OPEN breaker allowing 2 trials
    breaker = make_breaker(failure_threshold=1, half_open_max_calls=2, half_open_retry_after=2.0)
    half_open_breaker(breaker, clock)

    # When 2 trials are admitted and held
    first, second = breaker.acquire_sync(), breaker.acquire_sync()

    # Then both are trials with distinct tokens, and a third call is refused briefly
    assert first.token is not None and second.token is not None
    assert first.token != second.token
    assert breaker.stats.trials_in_flight == 2
    with pytest.raises(CircuitBreakerError) as caught:
        breaker.acquire_sync()
    assert caught.value.state is HALF_OPEN
    assert 0 < caught.value.retry_after <= 2.0

    # When one trial gives its slot back, Then a new trial is admitted
    breaker.release_sync(first)
    assert breaker.acquire_sync().token is not None


def test_one_failed_trial_reopens_the_circuit_for_a_fresh_timeout(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """The service is still down: back to OPEN for a whole timeout from the failure."""
    # Given a HALF_OPEN breaker needing 2 trial successes, with one success already
    breaker = make_breaker(
        failure_threshold=1, success_threshold=2, half_open_max_calls=2, timeout=50.0
    )
    half_open_breaker(breaker, clock)
    breaker.call_sync(ok)
    clock.advance(5.0)

    # When a trial fails
    fail_times(breaker, 1)

    # Then the circuit is OPEN for a fresh 50 s
    stats = breaker.stats
    assert stats.state is OPEN
    assert stats.retry_after == pytest.approx(50.0)
    assert stats.reopens == 1


def test_success_threshold_trial_successes_close_the_circuit(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """The service has recovered once success_threshold trials succeed."""
    # Given a HALF_OPEN breaker needing 2 trial successes
    breaker = make_breaker(failure_threshold=1, success_threshold=2)
    half_open_breaker(breaker, clock)

    # When one trial succeeds, Then it is still HALF_OPEN
    breaker.call_sync(ok)
    assert breaker.state is HALF_OPEN

    # When a second trial succeeds, Then it is CLOSED with nothing pending
    breaker.call_sync(ok)
    stats = breaker.stats
    assert stats.state is CLOSED
    assert stats.failure_count == 0
    assert stats.reopens == 0


def test_the_timeout_grows_after_failed_trials_up_to_max_timeout_and_resets_after_closing(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """Back-off: each failed trial in a row multiplies the OPEN period, within max_timeout."""
    # Given a breaker with timeout 10 s, doubled per failed trial, capped at 35 s
    breaker = make_breaker(
        failure_threshold=1,
        success_threshold=1,
        timeout=10.0,
        timeout_multiplier=2.0,
        max_timeout=35.0,
    )
    open_breaker(breaker)
    assert breaker.stats.retry_after == pytest.approx(10.0)

    # When trials fail one after the other, Then the OPEN period is 20 s, 35 s (not 40), 35 s
    for expected in (20.0, 35.0, 35.0):
        clock.advance(breaker.stats.retry_after)
        fail_times(breaker, 1)
        assert breaker.stats.retry_after == pytest.approx(expected)

    # When a trial then succeeds and the circuit opens again
    clock.advance(35.0)
    breaker.call_sync(ok)
    assert breaker.state is CLOSED
    fail_times(breaker, 1)

    # Then it is OPEN for the base timeout again
    assert breaker.stats.retry_after == pytest.approx(10.0)


def test_an_unreported_trial_frees_its_slot_after_trial_lease(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """A worker killed during its trial must not keep the circuit HALF_OPEN and busy forever."""
    # Given a HALF_OPEN breaker whose only trial slot is taken and never reported
    breaker = make_breaker(failure_threshold=1, trial_lease=20.0, half_open_retry_after=5.0)
    half_open_breaker(breaker, clock)
    lost = breaker.acquire_sync()
    assert lost.token is not None

    # When just under the lease has passed, Then calls are still refused
    clock.advance(19.9)
    with pytest.raises(CircuitBreakerError) as caught:
        breaker.acquire_sync()
    assert 0 < caught.value.retry_after <= 5.0

    # When the lease has run out
    clock.advance(0.1)

    # Then the slot is free for a new trial, and the lost trial's late report counts nothing
    assert breaker.stats.trials_in_flight == 0
    fresh = breaker.acquire_sync()
    assert fresh.token is not None
    breaker.record_failure_sync(lost)
    assert breaker.state is HALF_OPEN


# -- what counts as a failure --------------------------------------------------------------


class Interrupted(BaseException):
    """A BaseException that is not an Exception (like KeyboardInterrupt)."""


EXCLUDED_CASES = {
    "exclude": (dict(exclude=(NotFound,)), NotFound("no such album")),
    "is_failure": (dict(is_failure=lambda exc: not isinstance(exc, NotFound)), NotFound("nope")),
    "breaker_error": ({}, CircuitBreakerError("other-service", 3.0)),
    "keyboard_interrupt": ({}, KeyboardInterrupt()),
    "cancelled": ({}, asyncio.CancelledError()),
    "base_exception": ({}, Interrupted()),
}


@pytest.mark.parametrize("case", EXCLUDED_CASES, ids=list(EXCLUDED_CASES))
def test_excluded_errors_pass_through_unchanged_and_count_nothing(
    backend: Backend, case: str
) -> None:
    """Errors that say nothing about the service's health must not open its circuit."""
    # Given a breaker that opens at the first failure
    options, error = EXCLUDED_CASES[case]
    breaker = CircuitBreaker(
        "svc", CircuitBreakerConfig(failure_threshold=1), backend=backend, **options
    )

    def raise_it() -> None:
        raise error

    # When a call raises the excluded error
    with pytest.raises(BaseException) as caught:
        breaker.call_sync(raise_it)

    # Then the very same error reaches the caller and nothing was counted
    assert caught.value is error
    stats = breaker.stats
    assert stats.state is CLOSED
    assert stats.failure_count == 0
    assert stats.total_failures == 0
    assert stats.total_successes == 0


@pytest.mark.parametrize("case", EXCLUDED_CASES, ids=list(EXCLUDED_CASES))
def test_excluded_errors_give_a_half_open_trial_slot_back(
    backend: Backend, clock: FakeClock, case: str
) -> None:
    """A trial that ended without a verdict on the service frees its slot for the next one."""
    # Given a HALF_OPEN breaker with one trial slot
    options, error = EXCLUDED_CASES[case]
    breaker = CircuitBreaker(
        "svc", CircuitBreakerConfig(failure_threshold=1), backend=backend, **options
    )
    half_open_breaker(breaker, clock)

    def raise_it() -> None:
        raise error

    # When the trial raises the excluded error
    with pytest.raises(BaseException) as caught:
        breaker.call_sync(raise_it)

    # Then it passed through, the circuit is still HALF_OPEN and the slot is free again
    assert caught.value is error
    stats = breaker.stats
    assert stats.state is HALF_OPEN
    assert stats.trials_in_flight == 0
    assert breaker.acquire_sync().token is not None


# -- reset, stats, hold_open ------------------------------------------------------------------


def test_reset_forces_the_circuit_closed_and_keeps_the_totals(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """An operator's reset closes the circuit at once; the history stays for monitoring."""
    # Given an OPEN breaker that refused one call
    breaker = make_breaker(failure_threshold=2)
    open_breaker(breaker)
    with pytest.raises(CircuitBreakerError):
        breaker.call_sync(ok)
    before = breaker.stats

    # When it is reset
    breaker.reset_sync()

    # Then it is CLOSED, admits calls, and the totals are unchanged
    stats = breaker.stats
    assert stats.state is CLOSED
    assert stats.failure_count == 0
    assert stats.retry_after is None
    assert (stats.total_requests, stats.total_failures, stats.total_rejections) == (
        before.total_requests,
        before.total_failures,
        before.total_rejections,
    )
    assert breaker.call_sync(ok) == "ok"


def test_stats_total_requests_successes_failures_and_rejections(
    make_breaker: MakeBreaker,
) -> None:
    """Totals count every call by outcome, whichever path (local or shared) answered it."""
    # Given a breaker that opens after 2 failures
    breaker = make_breaker(failure_threshold=2)

    # When 3 calls succeed, 2 fail and 4 are refused
    for _ in range(3):
        breaker.call_sync(ok)
    fail_times(breaker, 2)
    for _ in range(4):
        with pytest.raises(CircuitBreakerError):
            breaker.call_sync(ok)

    # Then the totals say so
    stats = breaker.stats
    assert stats.name == "svc"
    assert stats.total_requests == 9
    assert stats.total_successes == 3
    assert stats.total_failures == 2
    assert stats.total_rejections == 4
    assert stats.last_state_change == pytest.approx(1_000_000.0)


def test_hold_open_opens_the_circuit_at_once_for_at_least_that_long(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """A service's own "retry after" (HTTP 429/503) opens the circuit whatever the count."""
    # Given a CLOSED breaker that needs 5 failures to open
    breaker = make_breaker(failure_threshold=5, timeout=10.0)

    # When one failure is reported with hold_open=120 s
    breaker.record_failure_sync(breaker.acquire_sync(), hold_open=120.0)

    # Then the circuit is OPEN for 120 s, not the 10 s timeout
    assert breaker.stats.retry_after == pytest.approx(120.0)
    clock.advance(119.0)
    assert breaker.state is OPEN
    clock.advance(1.0)
    assert breaker.state is HALF_OPEN


def test_hold_open_extends_but_never_shortens_an_open_period(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """Several callers may pass different hold_open values; the longest wins."""
    # Given a breaker held open for 100 s
    breaker = make_breaker(timeout=10.0)
    late = breaker.acquire_sync()
    later = breaker.acquire_sync()
    breaker.record_failure_sync(breaker.acquire_sync(), hold_open=100.0)

    # When another failure asks for a shorter hold
    breaker.record_failure_sync(late, hold_open=30.0)

    # Then the period is not shortened
    assert breaker.stats.retry_after == pytest.approx(100.0)

    # When a failure asks for a longer hold
    breaker.record_failure_sync(later, hold_open=250.0)

    # Then the period is extended
    assert breaker.stats.retry_after == pytest.approx(250.0)


# -- call forms --------------------------------------------------------------------------------


def test_async_call_awaits_coroutine_functions_and_also_runs_sync_functions(
    make_breaker: MakeBreaker,
) -> None:
    """``await cb.call`` serves both kinds of callables and counts their outcomes."""
    # Given a breaker that opens after 2 failures
    breaker = make_breaker(failure_threshold=2)

    async def fetch(value: int) -> int:
        await asyncio.sleep(0)
        return value * 2

    async def broken() -> None:
        await asyncio.sleep(0)
        raise ServiceDown("down")

    async def scenario() -> None:
        # When coroutine and plain functions are called
        assert await breaker.call(fetch, 21) == 42
        assert await breaker.call(ok) == "ok"
        with pytest.raises(ServiceDown):
            await breaker.call(broken)
        with pytest.raises(ServiceDown):
            await breaker.call(fail)
        # Then the 2 failures opened the circuit and the next call is refused
        with pytest.raises(CircuitBreakerError):
            await breaker.call(fetch, 1)

    asyncio.run(scenario())
    stats = breaker.stats
    assert (stats.total_successes, stats.total_failures, stats.total_rejections) == (2, 2, 1)


def test_async_two_step_form_records_outcomes(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    """The async acquire / record_* twins behave like the sync ones."""
    # Given a breaker that opens at the first failure and closes after one trial
    breaker = make_breaker(failure_threshold=1, success_threshold=1, timeout=5.0)

    async def scenario() -> None:
        # When a failure is recorded, Then it is OPEN
        await breaker.record_failure(await breaker.acquire())
        assert breaker.state is OPEN
        # When the timeout passes and a trial succeeds, Then it is CLOSED
        clock.advance(5.0)
        permit = await breaker.acquire()
        assert permit.token is not None
        await breaker.record_outcome(permit, None)
        assert breaker.state is CLOSED
        # When it is held open and reset, Then it is CLOSED
        await breaker.record_failure(await breaker.acquire(), hold_open=50.0)
        assert breaker.state is OPEN
        await breaker.reset()
        assert breaker.state is CLOSED

    asyncio.run(scenario())


def test_the_decorator_guards_a_sync_function(backend: Backend, clock: FakeClock) -> None:
    """``@circuit_breaker`` wraps every call and exposes its breaker."""

    # Given a decorated function that fails on demand
    @circuit_breaker("decorated", CircuitBreakerConfig(failure_threshold=1), backend=backend)
    def lookup(fail_now: bool) -> str:
        """Look something up."""
        if fail_now:
            raise ServiceDown("down")
        return "found"

    # When it succeeds and then fails
    assert lookup(False) == "found"
    with pytest.raises(ServiceDown):
        lookup(True)

    # Then its breaker is OPEN and refuses the next call; the wrapper keeps the metadata
    assert lookup.circuit_breaker.state is OPEN
    with pytest.raises(CircuitBreakerError):
        lookup(False)
    assert lookup.__name__ == "lookup"
    assert lookup.__doc__ == "Look something up."


def test_the_decorator_guards_an_async_function(backend: Backend) -> None:
    """An async function stays async when decorated."""

    # Given a decorated coroutine function
    @circuit_breaker("decorated", CircuitBreakerConfig(failure_threshold=1), backend=backend)
    async def lookup(fail_now: bool) -> str:
        await asyncio.sleep(0)
        if fail_now:
            raise ServiceDown("down")
        return "found"

    async def scenario() -> None:
        # When it succeeds and then fails
        assert await lookup(False) == "found"
        with pytest.raises(ServiceDown):
            await lookup(True)
        # Then the next call is refused
        with pytest.raises(CircuitBreakerError):
            await lookup(False)

    assert asyncio.iscoroutinefunction(lookup)
    asyncio.run(scenario())
    assert lookup.circuit_breaker.stats.total_successes == 1


def test_a_permit_reported_twice_counts_once(make_breaker: MakeBreaker) -> None:
    """Only the first report of a permit counts; later ones are ignored."""
    # Given a breaker that opens after 2 failures
    breaker = make_breaker(failure_threshold=2)
    permit = breaker.acquire_sync()

    # When one permit's failure is reported twice, and then a success too
    breaker.record_failure_sync(permit)
    breaker.record_failure_sync(permit)
    breaker.record_success_sync(permit)
    breaker.release_sync(permit)

    # Then one failure was counted and the circuit is still CLOSED
    stats = breaker.stats
    assert stats.state is CLOSED
    assert stats.failure_count == 1
    assert stats.total_failures == 1
    assert stats.total_successes == 0


def test_a_trial_permit_reported_twice_counts_once(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """A double report of a trial success must not count as two successful trials."""
    # Given a HALF_OPEN breaker needing 2 successes, allowing 2 trials
    breaker = make_breaker(failure_threshold=1, success_threshold=2, half_open_max_calls=2)
    half_open_breaker(breaker, clock)
    permit = breaker.acquire_sync()

    # When the same trial reports success twice
    breaker.record_success_sync(permit)
    breaker.record_success_sync(permit)

    # Then only one trial success counted
    assert breaker.state is HALF_OPEN


# -- errors and config --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (OPEN, "Circuit breaker spotify is OPEN, blocking request. Retry after 45.3 seconds."),
        (
            HALF_OPEN,
            "Circuit breaker spotify is HALF_OPEN, blocking request. Retry after 45.3 seconds.",
        ),
    ],
)
def test_circuit_breaker_error_reads_like_the_design_and_survives_pickling(
    state: CircuitState, expected: str
) -> None:
    """Workers send errors across processes (Dramatiq): the error must pickle intact."""
    # Given an error
    error = CircuitBreakerError("spotify", 45.3, state)

    # When it is pickled and unpickled
    copy = pickle.loads(pickle.dumps(error))

    # Then message and fields survive
    assert str(error) == expected
    assert str(copy) == expected
    assert (copy.service_name, copy.retry_after, copy.state) == ("spotify", 45.3, state)
    assert isinstance(copy, CircuitBreakerError)


def test_circuit_breaker_error_defaults_to_open() -> None:
    """The design's two-argument form means OPEN."""
    assert CircuitBreakerError("s", 1.0).state is OPEN


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", -1),
        ("failure_threshold", "5"),
        ("failure_threshold", 2.5),
        ("success_threshold", 0),
        ("timeout", 0.0),
        ("timeout", -1.0),
        ("timeout", "60"),
        ("reset_timeout", 0),
        ("half_open_max_calls", 0),
        ("half_open_max_calls", True),
        ("trial_lease", -5.0),
        ("half_open_retry_after", 0.0),
        ("timeout_multiplier", 0.5),
        ("max_timeout", 0.0),
        ("on_backend_error", "explode"),
        ("no_such_field", 1),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(field: str, value: object) -> None:
    """A misconfigured breaker must fail at start-up, saying which setting is wrong."""
    # When a config is built with one invalid value
    with pytest.raises(ConfigurationError) as caught:
        CircuitBreakerConfig(**{field: value})

    # Then the error is a ValueError whose message names the field
    assert isinstance(caught.value, ValueError)
    assert field in str(caught.value)


def test_config_rejects_max_timeout_below_timeout() -> None:
    """A cap below the base timeout is a contradiction."""
    with pytest.raises(ConfigurationError, match="max_timeout"):
        CircuitBreakerConfig(timeout=60.0, max_timeout=30.0)


def test_config_defaults_are_the_designs() -> None:
    """The SoulSpot design's numbers are the defaults."""
    config = CircuitBreakerConfig()
    assert (
        config.failure_threshold,
        config.success_threshold,
        config.timeout,
        config.reset_timeout,
    ) == (5, 2, 60.0, 300.0)


# -- logs --------------------------------------------------------------------------------------


def test_each_transition_and_refusal_is_logged_with_breaker_and_state(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """Operators follow a breaker through its log events (names and fields per the README)."""
    # Given a breaker that opens at the first failure and closes after one trial
    breaker = make_breaker("spotify", failure_threshold=1, success_threshold=1, timeout=30.0)

    # When it opens, refuses a call, turns HALF_OPEN and closes
    with structlog.testing.capture_logs() as logs:
        fail_times(breaker, 1)
        clock.advance(10.0)
        with pytest.raises(CircuitBreakerError):
            breaker.call_sync(ok)
        clock.advance(20.0)
        breaker.call_sync(ok)

    # Then four events were logged, in order, each naming the breaker and the state
    events = [entry for entry in logs if entry.get("circuit_breaker") == "spotify"]
    assert [e["event_name"] for e in events] == [
        "circuit_breaker.opened",
        "circuit_breaker.blocked",
        "circuit_breaker.half_open",
        "circuit_breaker.closed",
    ]
    opened, blocked, half_open, closed = events
    assert opened["log_level"] == "warning"
    assert opened["state"] == "open"
    assert opened["event"] == (
        "Circuit breaker spotify transitioned to OPEN state. Blocking requests for 30.0 seconds."
    )
    assert blocked["log_level"] == "warning"
    assert blocked["state"] == "open"
    assert blocked["retry_after"] == pytest.approx(20.0)
    assert blocked["event"] == (
        "Circuit breaker spotify is OPEN, blocking request. Retry after 20.0 seconds."
    )
    assert half_open["log_level"] == "info"
    assert half_open["state"] == "half_open"
    assert half_open["event"] == (
        "Circuit breaker spotify transitioned to HALF_OPEN state. Testing service recovery."
    )
    assert closed["log_level"] == "info"
    assert closed["state"] == "closed"
    assert closed["event"] == (
        "Circuit breaker spotify transitioned to CLOSED state. Service recovered."
    )


def test_a_reset_is_logged(make_breaker: MakeBreaker) -> None:
    """A forced close is visible in the logs as a reset, and a no-op reset logs nothing."""
    # Given an OPEN breaker
    breaker = make_breaker(failure_threshold=1)
    open_breaker(breaker)

    # When it is reset twice
    with structlog.testing.capture_logs() as logs:
        breaker.reset_sync()
        breaker.reset_sync()

    # Then one reset event was logged
    resets = [e for e in logs if e.get("event_name") == "circuit_breaker.reset"]
    assert len(resets) == 1
    assert resets[0]["circuit_breaker"] == "svc"
    assert resets[0]["state"] == "closed"


# -- regressions: bugs found while writing these tests ------------------------------------------


def test_stats_do_not_report_failures_that_have_lapsed(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    """BreakerStats.failure_count is documented as the failures *currently* counted."""
    # Given 2 failures, then more than reset_timeout without another
    breaker = make_breaker(failure_threshold=3, reset_timeout=100.0)
    fail_times(breaker, 2)
    clock.advance(100.001)

    # When stats are read
    stats = breaker.stats

    # Then no failures count towards opening any more (the next one would be the first)
    assert stats.failure_count == 0


#: Seconds the stats race test keeps calling before it gives up looking for the race.
RACE_SEARCH_SECONDS = 2.0


def test_stats_totals_never_lag_behind_locally_answered_calls(redis_client: redis.Redis) -> None:
    """Monitoring must never see totals go down, even while the watcher flushes local counts."""
    # Given a Redis backend whose fast path is live and refreshes often
    backend = RedisBackend(redis_client, refresh_interval=0.005)
    try:
        breaker = CircuitBreaker("svc", CircuitBreakerConfig(), backend=backend)
        breaker.call_sync(ok)
        assert backend._watcher is not None and backend._watcher.live.wait(5.0)

        # When calls answered locally alternate with stats reads
        calls, lagging = 1, 0
        deadline = time.monotonic() + RACE_SEARCH_SECONDS
        while not lagging and time.monotonic() < deadline:
            breaker.call_sync(ok)
            calls += 1
            lagging = calls - breaker.stats.total_requests

        # Then stats never report fewer requests than were made
        assert lagging == 0
    finally:
        backend.close()


def test_retry_after_is_never_below_the_minimum_on_the_fast_path(
    make_breaker: MakeBreaker, backend: Backend, clock: FakeClock
) -> None:
    """A refusal must never say "retry now": retry_after is at least 1 ms on every path."""
    # Given an OPEN breaker with 0.5 ms of its timeout left, on a live fast path
    breaker = make_breaker(failure_threshold=1, timeout=10.0)
    open_breaker(breaker)
    watcher = getattr(backend, "_watcher", None)
    assert watcher is None or watcher.live.wait(5.0)
    clock.advance(9.9995)

    # When a call is refused
    with pytest.raises(CircuitBreakerError) as caught:
        breaker.acquire_sync()

    # Then retry_after is the documented minimum
    assert caught.value.retry_after >= 0.001
