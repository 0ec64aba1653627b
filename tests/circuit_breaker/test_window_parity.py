"""The Lua scripts and the pure policy agree on windows and modes, step for step.

Hypothesis draws a window config and a sequence of steps (calls that succeed, fail or are slow,
time passing, mode changes, resets); one breaker on each backend takes the same steps under the
same clock, and after each step both must show the same state, window, reason and totals.
"""

from __future__ import annotations

import uuid

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soulspot_jobs.circuit_breaker import (
    BreakerStats,
    CircuitBreakerConfig,
    MemoryBackend,
    RedisBackend,
)
from soulspot_jobs.circuit_breaker.backends.base import Backend

from .conftest import FakeClock

configs = st.builds(
    lambda kind, size, minimum, rate, slow, slow_rate: CircuitBreakerConfig(
        sliding_window_type=kind,
        sliding_window_size=size,
        minimum_calls=min(minimum, size) if kind == "count" else minimum,
        failure_rate_threshold=rate,
        slow_call_duration=slow,
        slow_call_rate_threshold=slow_rate,
        timeout=10.0,
        success_threshold=1,
    ),
    st.sampled_from(["count", "time"]),
    st.integers(1, 120),
    st.integers(1, 12),
    st.sampled_from([1.0, 33.3, 50.0, 100.0]),
    st.sampled_from([None, 1.0]),
    st.sampled_from([25.0, 100.0]),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["success", "failure", "slow", "slow_failure", "hold_open"])),
        st.tuples(st.just("wait"), st.floats(0.1, 30.0)),
        st.tuples(st.just("mode"), st.sampled_from(["normal", "disabled", "metrics_only"])),
        st.tuples(st.just("reset")),
    ),
    max_size=40,
)


def _step(backend: Backend, name: str, config: CircuitBreakerConfig, step: tuple) -> None:
    kind = step[0]
    if kind == "mode":
        backend.set_mode(name, config, step[1])
    elif kind == "reset":
        backend.reset(name, config)
    elif kind != "wait":
        decision = backend.admit(name, config, "token")
        if not decision.admitted or decision.disabled:
            return
        slow = kind in ("slow", "slow_failure") and config.slow_call_duration is not None
        if kind in ("success", "slow"):
            backend.record_success(name, config, decision.token, slow=slow)
        else:
            hold = 5.0 if kind == "hold_open" else None
            backend.record_failure(name, config, decision.token, hold, "down", slow=slow)


def _seen(stats: BreakerStats) -> tuple:
    return (
        stats.state,
        stats.mode,
        stats.reason,
        stats.retry_after and round(stats.retry_after, 6),
        (stats.window_calls, stats.window_failures, stats.window_slow_calls),
        stats.would_opens,
        (stats.total_requests, stats.total_successes, stats.total_failures),
        stats.total_rejections,
        stats.reopens,
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(config=configs, plan=steps)
def test_redis_and_memory_agree_on_windows_and_modes(
    redis_client: redis.Redis, config: CircuitBreakerConfig, plan: list[tuple]
) -> None:
    clock = FakeClock()
    memory = MemoryBackend(clock=clock)
    shared = RedisBackend(redis_client, clock=clock, local_view=False)
    name = f"parity-{uuid.uuid4().hex}"
    for step in plan:
        if step[0] == "wait":
            clock.advance(step[1])
            continue
        _step(memory, name, config, step)
        _step(shared, name, config, step)
        assert _seen(shared.stats(name, config)) == _seen(memory.stats(name, config)), step
    shared.close()
