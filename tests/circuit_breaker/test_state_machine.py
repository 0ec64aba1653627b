"""Random sequences of calls, reports, resets and clock moves, checked against a reference model.

The model below is written for this test alone, from the documented semantics; it shares no
code with ``soulspot_jobs.circuit_breaker.policy`` so that a mistake there cannot hide itself.
After every step the breaker's answer and its ``stats`` must agree with the model, on the memory
backend and on Redis both with and without the local fast path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import redis
import structlog
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from soulspot_jobs.circuit_breaker import (
    Backend,
    BreakerStats,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    CircuitState,
    MemoryBackend,
    Permit,
    RedisBackend,
)
from soulspot_jobs.embedded.server import EmbeddedRedis

from .conftest import REFRESH_INTERVAL, FakeClock

#: Examples per backend variant and steps per example; the whole file runs in well under 30 s.
MAX_EXAMPLES = 100
STEPS = 40
#: Smallest retry_after the package ever gives, in seconds ("never retry now").
MIN_RETRY_AFTER = 0.001
#: Tolerance, in seconds, of retry_after comparisons (floats pass through Lua as text).
EPSILON = 1e-6
#: Seconds to wait for the Redis backend's view watcher to subscribe.
WATCHER_DEADLINE = 5.0

ADMITTED, TRIAL, REJECTED = "admitted", "trial", "rejected"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class ServiceDown(Exception):
    """A failure of the guarded service."""


class Excluded(Exception):
    """An error the breaker is told not to count (``exclude=``)."""


@dataclass
class Model:
    """The documented breaker semantics, as simply as they can be written.

    ``state`` is the stored state; what callers see is :meth:`seen`, where an OPEN circuit whose
    time is up already shows HALF_OPEN. Trial slots are keyed by the real permits' tokens.
    """

    config: CircuitBreakerConfig
    state: str = CLOSED
    failures: int = 0
    last_failure: float = 0.0
    open_until: float = 0.0
    reopens: int = 0
    trial_wins: int = 0
    leases: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    successes: int = 0
    failures_total: int = 0
    rejections: int = 0

    def seen(self, now: float) -> str:
        if self.state == OPEN and now >= self.open_until:
            return HALF_OPEN
        return self.state

    def pending(self, now: float) -> int:
        """Failures that still count towards opening: none once the last is too old."""
        if now - self.last_failure > self.config.reset_timeout:
            return 0
        return self.failures

    def live_leases(self, now: float) -> list[float]:
        return [lease for lease in self.leases.values() if lease > now]

    def _enter(self, state: str) -> None:
        self.state = state
        self.trial_wins = 0
        self.leases = {}

    def _open(self, now: float, seconds: float) -> None:
        self.open_until = now + seconds
        self._enter(OPEN)

    def _close(self) -> None:
        self.failures = 0
        self.reopens = 0
        self._enter(CLOSED)

    def admit(self, now: float) -> tuple[str, str, float]:
        """(verdict, state, expected retry_after) of a call asking now; a TRIAL is then
        registered with :meth:`add_trial` under the real permit's token."""
        self.requests += 1
        if self.seen(now) == OPEN:
            self.rejections += 1
            return REJECTED, OPEN, max(self.open_until - now, MIN_RETRY_AFTER)
        if self.state == OPEN:
            self._enter(HALF_OPEN)
        if self.state == CLOSED:
            return ADMITTED, CLOSED, 0.0
        live = self.live_leases(now)
        if len(live) < self.config.half_open_max_calls:
            return TRIAL, HALF_OPEN, 0.0
        self.rejections += 1
        first_free = min(live) - now
        return (
            REJECTED,
            HALF_OPEN,
            max(min(self.config.half_open_retry_after, first_free), MIN_RETRY_AFTER),
        )

    def add_trial(self, token: str, now: float) -> None:
        self.leases = {t: lease for t, lease in self.leases.items() if lease > now}
        self.leases[token] = now + self.config.trial_lease

    def _end_trial(self, token: str | None, now: float) -> bool:
        """Whether ``token`` held a live slot in this HALF_OPEN period; the slot is freed."""
        lease = self.leases.pop(token, None) if token is not None else None
        return lease is not None and lease > now

    def success(self, token: str | None, now: float) -> None:
        self.successes += 1
        if self.state == CLOSED:
            self.failures = 0
        elif self.state == HALF_OPEN and self._end_trial(token, now):
            self.trial_wins += 1
            if self.trial_wins >= self.config.success_threshold:
                self._close()

    def failure(self, token: str | None, now: float, hold_open: float | None = None) -> None:
        self.failures_total += 1
        if hold_open is not None:
            if self.state != OPEN:
                self._open(now, hold_open)
            else:
                self.open_until = max(self.open_until, now + hold_open)
        elif self.state == CLOSED:
            self.failures = self.pending(now) + 1
            self.last_failure = now
            if self.failures >= self.config.failure_threshold:
                self.reopens = 0
                self._open(now, self.config.timeout)
        elif self.state == HALF_OPEN and self._end_trial(token, now):
            self.reopens += 1
            grown = self.config.timeout * self.config.timeout_multiplier**self.reopens
            if self.config.max_timeout is not None:
                grown = min(grown, self.config.max_timeout)
            self._open(now, grown)

    def release(self, token: str | None, now: float) -> None:
        if self.state == HALF_OPEN:
            self._end_trial(token, now)

    def reset(self) -> None:
        self._close()


def _totals(stats: BreakerStats) -> tuple[int, int, int, int]:
    return (
        stats.total_requests,
        stats.total_successes,
        stats.total_failures,
        stats.total_rejections,
    )


class BreakerMachine(RuleBasedStateMachine):
    """Drives one breaker and one :class:`Model` with the same steps and compares them.

    Subclasses choose the backend (``backend_kind``: "memory", "redis" or "redis-local"); the
    Redis variants read the session server's URL from ``redis_url``.
    """

    backend_kind = "memory"
    redis_url = ""

    permits = Bundle("permits")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.client: redis.Redis | None = None
        if self.backend_kind == "memory":
            self.backend: Backend = MemoryBackend(clock=self.clock)
        else:
            self.client = redis.Redis.from_url(self.redis_url)
            self.client.flushall()
            self.backend = RedisBackend(
                self.client,
                clock=self.clock,
                local_view=self.backend_kind == "redis-local",
                refresh_interval=REFRESH_INTERVAL,
            )
        self.finished: list[Permit] = []

    def teardown(self) -> None:
        self.backend.close()
        if self.client is not None:
            self.client.close()

    @initialize(
        failure_threshold=st.integers(1, 3),
        success_threshold=st.integers(1, 2),
        half_open_max_calls=st.integers(1, 2),
        reset_timeout=st.sampled_from([15.0, 30.0]),
        trial_lease=st.sampled_from([5.0, 20.0]),
        half_open_retry_after=st.sampled_from([1.0, 3.0]),
        growth=st.sampled_from([(1.0, None), (2.0, None), (2.0, 25.0)]),
    )
    def configure(
        self,
        failure_threshold: int,
        success_threshold: int,
        half_open_max_calls: int,
        reset_timeout: float,
        trial_lease: float,
        half_open_retry_after: float,
        growth: tuple[float, float | None],
    ) -> None:
        """Given a breaker with small thresholds and a 10 s timeout."""
        timeout_multiplier, max_timeout = growth
        self.config = CircuitBreakerConfig(
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
            timeout=10.0,
            reset_timeout=reset_timeout,
            half_open_max_calls=half_open_max_calls,
            trial_lease=trial_lease,
            half_open_retry_after=half_open_retry_after,
            timeout_multiplier=timeout_multiplier,
            max_timeout=max_timeout,
        )
        self.model = Model(self.config)
        self.breaker = CircuitBreaker("svc", self.config, backend=self.backend, exclude=(Excluded,))
        if self.backend_kind == "redis-local":
            # A first round trip starts the watcher; once it is live the fast path answers.
            self.breaker.reset_sync()
            watcher = self.backend._watcher
            assert watcher is not None and watcher.live.wait(WATCHER_DEADLINE)

    # -- steps ----------------------------------------------------------------------------------

    def _admit(self) -> tuple[Permit | None, str]:
        """Ask both for admission; check the verdict; return the permit (None if refused)."""
        now = self.clock()
        verdict, state, retry_after = self.model.admit(now)
        try:
            permit = self.breaker.acquire_sync()
        except CircuitBreakerError as exc:
            assert verdict == REJECTED, f"refused ({exc}) but the model says {verdict}"
            assert exc.state.value == state
            self._check_retry_after(exc, state, retry_after)
            return None, verdict
        actual = TRIAL if permit.token is not None else ADMITTED
        assert actual == verdict, f"got {actual} but the model says {verdict} ({state})"
        if permit.token is not None:
            self.model.add_trial(permit.token, now)
        return permit, verdict

    def _check_retry_after(self, exc: CircuitBreakerError, state: str, expected: float) -> None:
        """OPEN: the time left. HALF_OPEN and busy: the model's value (time to the first free
        slot, at most half_open_retry_after); the local view may answer less, never more."""
        assert exc.retry_after > 0
        if state == OPEN:
            assert exc.retry_after >= MIN_RETRY_AFTER
            assert exc.retry_after == pytest.approx(expected, abs=EPSILON)
        elif self.backend_kind != "redis-local":
            assert exc.retry_after == pytest.approx(expected, abs=EPSILON)
        else:
            assert 0 < exc.retry_after <= expected + EPSILON

    @rule(target=permits)
    def acquire(self) -> object:
        """When a caller takes a permit (two-step form) and holds it."""
        permit, _ = self._admit()
        return multiple() if permit is None else permit

    @rule(permit=consumes(permits))
    def succeed(self, permit: Permit) -> None:
        """When a held permit reports success."""
        self.model.success(permit.token, self.clock())
        self.breaker.record_success_sync(permit)
        self.finished.append(permit)

    @rule(permit=consumes(permits), hold_open=st.sampled_from([None, None, None, 4.0, 40.0]))
    def fail(self, permit: Permit, hold_open: float | None) -> None:
        """When a held permit reports failure (sometimes with the service's retry-after)."""
        self.model.failure(permit.token, self.clock(), hold_open)
        self.breaker.record_failure_sync(permit, hold_open=hold_open)
        self.finished.append(permit)

    @rule(permit=consumes(permits))
    def release(self, permit: Permit) -> None:
        """When a held permit is given back without an outcome."""
        self.model.release(permit.token, self.clock())
        self.breaker.release_sync(permit)
        self.finished.append(permit)

    @precondition(lambda self: self.finished)
    @rule(data=st.data(), outcome=st.sampled_from(["success", "failure", "release"]))
    def report_again(self, data: st.DataObject, outcome: str) -> None:
        """When a finished permit is reported a second time, nothing changes."""
        permit = data.draw(st.sampled_from(self.finished))
        if outcome == "success":
            self.breaker.record_success_sync(permit)
        elif outcome == "failure":
            self.breaker.record_failure_sync(permit)
        else:
            self.breaker.release_sync(permit)

    @rule(outcome=st.sampled_from(["success", "failure", "excluded"]))
    def call(self, outcome: str) -> None:
        """When a guarded call runs and succeeds, fails, or raises an excluded error."""
        now = self.clock()
        verdict, state, retry_after = self.model.admit(now)
        ran = []

        def service() -> str:
            ran.append(True)
            if outcome == "failure":
                raise ServiceDown()
            if outcome == "excluded":
                raise Excluded()
            return "ok"

        trial_token = None
        try:
            self.breaker.call_sync(service)
        except CircuitBreakerError as exc:
            assert verdict == REJECTED, f"refused ({exc}) but the model says {verdict}"
            assert not ran
            assert exc.state.value == state
            self._check_retry_after(exc, state, retry_after)
            return
        except (ServiceDown, Excluded):
            pass
        assert verdict != REJECTED, "the call ran but the model refuses it"
        assert ran
        if verdict == TRIAL:
            # The real token is not visible through call_sync; any unique key stands for it.
            trial_token = f"call-{self.model.requests}"
            self.model.add_trial(trial_token, now)
        if outcome == "success":
            self.model.success(trial_token, now)
        elif outcome == "failure":
            self.model.failure(trial_token, now)
        else:
            self.model.release(trial_token, now)

    @rule()
    def reset(self) -> None:
        """When an operator resets the breaker."""
        self.model.reset()
        self.breaker.reset_sync()

    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """When time passes: often just around a timeout, a lease or the reset window."""
        config = self.config
        landmarks = [
            config.timeout,
            config.reset_timeout,
            config.trial_lease,
            config.half_open_retry_after,
            4.0,
            40.0,
            20.0,
            25.0,
        ]
        seconds = data.draw(
            st.one_of(
                st.sampled_from(landmarks).flatmap(
                    lambda mark: st.sampled_from([mark - 0.001, mark, mark + 0.001])
                ),
                st.sampled_from([0.0005, 0.5, 1.0]),
                st.floats(0.0, 60.0, allow_nan=False),
            ),
            label="seconds",
        )
        self.clock.advance(seconds)

    # -- the check after every step ---------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        """Then state, counts, trials, totals and retry_after are the model's."""
        if not hasattr(self, "model"):
            return
        now, model = self.clock(), self.model
        stats = self.breaker.stats
        expected_state = model.seen(now)
        assert stats.state.value == expected_state
        if expected_state != CLOSED:
            assert stats.failure_count == model.failures
        else:
            assert stats.failure_count == model.pending(now)
        assert stats.trials_in_flight == (
            len(model.live_leases(now)) if expected_state == HALF_OPEN else 0
        )
        assert stats.reopens == model.reopens
        expected_totals = (model.requests, model.successes, model.failures_total, model.rejections)
        assert _totals(stats) == expected_totals
        if expected_state == OPEN:
            assert stats.retry_after == pytest.approx(
                max(model.open_until - now, MIN_RETRY_AFTER), abs=EPSILON
            )
        else:
            assert stats.retry_after is None
        assert self.breaker.state is CircuitState(expected_state)


#: Examples and steps per variant; no deadline since Redis round trips vary in time.
MACHINE_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("backend_kind", ["memory", "redis", "redis-local"])
def test_the_breaker_agrees_with_the_reference_model(
    backend_kind: str, redis_server: EmbeddedRedis
) -> None:
    """Any sequence of steps leaves the breaker where the documented semantics say."""

    class Machine(BreakerMachine):
        pass

    Machine.backend_kind = backend_kind
    Machine.redis_url = redis_server.url
    with structlog.testing.capture_logs():
        run_state_machine_as_test(Machine, settings=MACHINE_SETTINGS)
