"""Windows and modes across a cluster: 8 worker processes share one Redis breaker.

Each child is spawned (it imports the package afresh and builds its own backend, local view and
view watcher, with the production refresh and flush intervals), and reports wall-clock times of
what it saw, so the parent can measure how long the cluster took to follow.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import queue
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from soulspot_jobs.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    RedisBackend,
)

#: Worker processes sharing the breaker.
WORKERS = 8
#: Seconds a child or the parent waits for the others before the test fails instead of hanging.
WAIT = 60.0
#: The longest the cluster may take to follow a change (the issue's goal).
FOLLOW_WITHIN = 1.0
#: Key prefix of these tests' breakers.
PREFIX = "test:cluster"
WINDOW = {
    "sliding_window_type": "count",
    "sliding_window_size": 100,
    "minimum_calls": 40,
    "failure_rate_threshold": 50.0,
}
#: Seconds each worker calls a healthy service before it starts failing.
HEALTHY_FOR = 0.5
#: Seconds between two calls of one worker.
PACE = 0.004
#: Failures of each worker in the minimum-calls test: with each worker's first (healthy) call,
#: the cluster stays below ``minimum_calls``.
FEW_FAILURES = (WINDOW["minimum_calls"] - WORKERS) // WORKERS - 1
#: ``slow_call_duration`` of the slow-call test, seconds.
SLOW_CALL = 0.01
#: The rules measured: a count window, a time window, slow calls in a count window.
RULES = {
    "count": WINDOW,
    "time": {**WINDOW, "sliding_window_type": "time", "sliding_window_size": 2},
    "slow": {**WINDOW, "slow_call_duration": SLOW_CALL, "slow_call_rate_threshold": 50.0},
}
#: Times the mode is switched in the propagation test.
MODE_SWITCHES = 6
SPAWN = multiprocessing.get_context("spawn")


class ServiceDown(Exception):
    """The guarded service failed."""


def _fail() -> None:
    raise ServiceDown("down")


def _slow() -> None:
    """An upstream that answers, but slower than ``slow_call_duration``."""
    time.sleep(SLOW_CALL * 1.5)


# -- run in the child processes ----------------------------------------------------------------


def _child(
    redis_url: str,
    name: str,
    fields: dict[str, Any],
    body: Callable[..., dict[str, Any]],
    *shared: Any,
) -> None:
    results, barrier = shared[0], shared[1]
    try:
        backend = RedisBackend.from_url(redis_url, prefix=PREFIX)
        try:
            breaker = CircuitBreaker(name, CircuitBreakerConfig(**fields), backend=backend)
            results.put(body(breaker, backend, *shared[1:]))
        finally:
            backend.close()
    except BaseException:
        barrier.abort()
        results.put({"error": traceback.format_exc()})


def _go_live(breaker: CircuitBreaker, backend: RedisBackend) -> None:
    """One call, then wait until this process's local view is live (the healthy path)."""
    breaker.call_sync(lambda: None)
    assert backend._watcher is not None and backend._watcher.live.wait(WAIT)


def _healthy_then_failing(breaker: CircuitBreaker, backend: RedisBackend, barrier: Any) -> dict:
    _go_live(breaker, backend)
    barrier.wait(WAIT)
    start = time.time()
    outcomes: list[tuple[float, bool]] = []
    bad_call = _slow if breaker.config.slow_call_duration else _fail
    while time.time() - start < WAIT:
        failing = time.time() - start >= HEALTHY_FOR
        try:
            breaker.call_sync(bad_call if failing else (lambda: None))
        except CircuitBreakerError:
            return {"outcomes": outcomes, "refused_at": time.time()}
        except ServiceDown:
            pass
        outcomes.append((time.time(), failing))
        time.sleep(PACE)
    return {"outcomes": outcomes, "refused_at": None}


def _few_failures(breaker: CircuitBreaker, backend: RedisBackend, barrier: Any) -> dict:
    _go_live(breaker, backend)
    barrier.wait(WAIT)
    for _ in range(FEW_FAILURES):
        with contextlib.suppress(ServiceDown):
            breaker.call_sync(_fail)
    return {}


def _follow_modes(
    breaker: CircuitBreaker, backend: RedisBackend, barrier: Any, switched: Any
) -> dict:
    _go_live(breaker, backend)
    seen = []
    for switch in range(MODE_SWITCHES):
        barrier.wait(WAIT)  # the parent switches now
        disabled = switch % 2 == 0
        deadline = time.monotonic() + WAIT
        while breaker.acquire_sync().disabled != disabled:
            assert time.monotonic() < deadline, "the mode never arrived"
            time.sleep(0.001)
        seen.append(time.time())
    return {"seen": seen}


# -- run in the test process -------------------------------------------------------------------


@contextlib.contextmanager
def _cluster(
    redis_url: str,
    name: str,
    body: Callable[..., dict[str, Any]],
    *shared: Any,
    fields: dict[str, Any] = WINDOW,
) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(
            target=_child, args=(redis_url, name, fields, body, results, *shared), daemon=True
        )
        for _ in range(WORKERS)
    ]

    def collect() -> list[dict[str, Any]]:
        reports = []
        for _ in processes:
            try:
                reports.append(results.get(timeout=WAIT))
            except queue.Empty:
                raise AssertionError("a worker sent no report in time") from None
        errors = [r["error"] for r in reports if "error" in r]
        assert not errors, "a worker failed:\n" + "\n".join(errors)
        return reports

    try:
        for process in processes:
            process.start()
        yield collect
    finally:
        shared[0].abort()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(10)


def _crossing(outcomes: list[tuple[float, bool]], fields: dict[str, Any]) -> float:
    """When the cluster's last calls (or seconds), in time order, first met the opening rule.

    A time window counts whole buckets, as the breaker (and Resilience4j) keeps it: the current
    bucket and the ones before it up to the window's size, so between ``size - width`` and
    ``size`` seconds back.
    """
    ordered = sorted(outcomes)
    config = CircuitBreakerConfig(**fields)
    for i, (at, _) in enumerate(ordered):
        if config.sliding_window_type == "count":
            window = [bad for _, bad in ordered[max(0, i + 1 - config.sliding_window_size) : i + 1]]
        else:
            width = config.bucket_width
            oldest = math.floor(at / width) - math.ceil(config.sliding_window_size / width)
            window = [bad for t, bad in ordered[: i + 1] if math.floor(t / width) > oldest]
        threshold = (
            fields.get("slow_call_rate_threshold", 100)
            if fields.get("slow_call_duration")
            else fields["failure_rate_threshold"]
        )
        enough = len(window) >= fields["minimum_calls"]
        if enough and sum(window) * 100 >= threshold * len(window):
            return at
    raise AssertionError("the outcomes never crossed the threshold")


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_worker_is_refused_within_a_second_of_the_cluster_crossing_the_threshold(
    redis_url: str, rule: str
) -> None:
    fields = RULES[rule]
    barrier = SPAWN.Barrier(WORKERS)
    with _cluster(redis_url, rule, _healthy_then_failing, barrier, fields=fields) as collect:
        reports = collect()
    crossed = _crossing([o for r in reports for o in r["outcomes"]], fields)
    refused = [r["refused_at"] for r in reports]
    assert None not in refused, "a worker was never refused"
    latencies = sorted(at - crossed for at in refused)
    assert latencies[-1] <= FOLLOW_WITHIN, latencies


def test_a_cluster_never_opens_below_the_minimum_number_of_calls(redis_url: str) -> None:
    barrier = SPAWN.Barrier(WORKERS)
    with _cluster(redis_url, "few", _few_failures, barrier) as collect:
        collect()
    backend = RedisBackend.from_url(redis_url, prefix=PREFIX, local_view=False)
    try:
        stats = CircuitBreaker("few", CircuitBreakerConfig(**WINDOW), backend=backend).stats
    finally:
        backend.close()
    assert stats.transitions.get("open", 0) == 0
    assert stats.total_failures == WORKERS * FEW_FAILURES
    assert stats.window_calls == WORKERS * (FEW_FAILURES + 1) < WINDOW["minimum_calls"]


def test_every_worker_follows_a_mode_change_within_a_second(redis_url: str) -> None:
    barrier = SPAWN.Barrier(WORKERS + 1)
    operator_backend = RedisBackend.from_url(redis_url, prefix=PREFIX, local_view=False)
    operator = CircuitBreaker("modes", CircuitBreakerConfig(**WINDOW), backend=operator_backend)
    switched_at = []
    try:
        with _cluster(redis_url, "modes", _follow_modes, barrier, None) as collect:
            for switch in range(MODE_SWITCHES):
                barrier.wait(WAIT)
                switched_at.append(time.time())
                operator.set_mode_sync("disabled" if switch % 2 == 0 else "normal")
            reports = collect()
    finally:
        operator_backend.close()
    latencies = sorted(seen - switched_at[i] for r in reports for i, seen in enumerate(r["seen"]))
    assert len(latencies) == WORKERS * MODE_SWITCHES
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert p99 <= FOLLOW_WITHIN and latencies[-1] <= FOLLOW_WITHIN, latencies
