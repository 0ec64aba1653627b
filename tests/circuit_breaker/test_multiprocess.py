"""One Redis breaker shared by several processes, each running several threads.

These tests check two promises that hold only if every transition is one atomic Lua script:
under a storm of concurrent failures the circuit opens exactly once, with exactly
``failure_threshold`` failures counted; and in HALF_OPEN no more than ``half_open_max_calls``
trials are ever admitted across the whole cluster. Children are started with the ``spawn``
method, so each imports the package afresh and builds its own backend, client and view watcher,
as real worker processes do.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import redis
import structlog

from soulspot_jobs.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    CircuitState,
    RedisBackend,
)

#: Worker processes sharing the breaker.
PROCESSES = 4
#: Threads per worker process, all calling the same breaker object.
THREADS = 4
#: Every worker thread in the cluster.
WORKERS = PROCESSES * THREADS
#: Seconds between refreshes of each child's local view.
REFRESH_INTERVAL = 0.1
#: Seconds a barrier may wait before the test fails instead of hanging; covers spawn start-up.
BARRIER_TIMEOUT = 30.0
#: Seconds the parent waits for each child's report.
RESULT_TIMEOUT = 60.0
#: Seconds the parent waits for each child to exit before terminating it.
JOIN_TIMEOUT = 10.0
#: Key prefix of the breakers of these tests.
PREFIX = "test:mp"
#: Acquire-then-fail attempts of each worker thread in the opening storm.
FAILURE_ATTEMPTS = 3
#: Rounds of the half-open test.
HALF_OPEN_ROUNDS = 30
#: Seconds another process's view may take to see a change published by pub/sub (generous).
PUBSUB_DELAY = 0.5
#: Seconds the coordinator waits beyond the breaker's own retry_after before the next round.
TIMEOUT_MARGIN = 0.03

SPAWN = multiprocessing.get_context("spawn")


# -- run in the child processes ----------------------------------------------------------------


def _child(
    redis_url: str,
    name: str,
    config_fields: dict[str, Any],
    barrier: Any,
    results: Any,
    thread_body: Callable[..., None],
) -> None:
    """Build this process's backend, run ``THREADS`` threads of ``thread_body``, report once.

    Every log event of the breaker is captured and sent back with the report, so the parent can
    count transitions across the cluster. A failing thread breaks the barrier, so that no other
    worker waits for it until the timeout.
    """
    outcomes: list[dict[str, Any]] = [{} for _ in range(THREADS)]
    errors: list[str] = []
    events: list[dict[str, Any]] = []
    try:
        backend = RedisBackend.from_url(redis_url, prefix=PREFIX, refresh_interval=REFRESH_INTERVAL)
        try:
            breaker = CircuitBreaker(name, CircuitBreakerConfig(**config_fields), backend=backend)

            def guarded(outcome: dict[str, Any]) -> None:
                try:
                    thread_body(breaker, barrier, outcome)
                except BaseException:
                    errors.append(traceback.format_exc())
                    barrier.abort()

            with structlog.testing.capture_logs() as captured:
                threads = [threading.Thread(target=guarded, args=(o,)) for o in outcomes]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            events = list(captured)
        finally:
            backend.close()
    except BaseException:
        errors.append(traceback.format_exc())
        barrier.abort()
    results.put({"outcomes": outcomes, "events": events, "errors": errors})


def _fail_together(breaker: CircuitBreaker, barrier: Any, outcome: dict[str, Any]) -> None:
    """Start with every other worker, then acquire and report a failure, a few times."""
    outcome["failures_reported"] = 0
    barrier.wait(BARRIER_TIMEOUT)
    for _ in range(FAILURE_ATTEMPTS):
        try:
            permit = breaker.acquire_sync()
        except CircuitBreakerError:
            continue
        breaker.record_failure_sync(permit)
        outcome["failures_reported"] += 1


def _ask_in_rounds(breaker: CircuitBreaker, barrier: Any, outcome: dict[str, Any]) -> None:
    """Each round: ask once with everybody, then the admitted trials fail with everybody.

    The three barrier waits of a round are shared with the coordinating parent, which starts a
    round only once the reopened circuit's timeout has passed.
    """
    verdicts = outcome["verdicts"] = []
    for _ in range(HALF_OPEN_ROUNDS):
        barrier.wait(BARRIER_TIMEOUT)  # the timeout has passed: everybody asks
        try:
            permit = breaker.acquire_sync()
        except CircuitBreakerError as exc:
            permit, verdict = None, f"rejected while {exc.state.value}"
        else:
            verdict = "trial" if permit.is_trial else "admitted"
        verdicts.append(verdict)
        barrier.wait(BARRIER_TIMEOUT)  # everybody has asked
        if permit is not None:
            breaker.record_failure_sync(permit)
        barrier.wait(BARRIER_TIMEOUT)  # the trials have failed: the circuit is OPEN again


# -- run in the test process -------------------------------------------------------------------


@contextlib.contextmanager
def _cluster(
    redis_url: str,
    name: str,
    config_fields: dict[str, Any],
    thread_body: Callable[..., None],
    barrier: Any,
) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Start ``PROCESSES`` spawned children; yield a function collecting their reports.

    Children are always joined, and terminated when they do not exit in time, so a failing
    test never leaves processes behind.
    """
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(
            target=_child,
            args=(redis_url, name, config_fields, barrier, results, thread_body),
            daemon=True,
        )
        for _ in range(PROCESSES)
    ]

    def collect() -> list[dict[str, Any]]:
        reports = []
        for _ in processes:
            try:
                reports.append(results.get(timeout=RESULT_TIMEOUT))
            except queue.Empty:
                raise AssertionError("a child process sent no report in time") from None
        errors = [error for report in reports for error in report["errors"]]
        assert not errors, "a worker failed:\n" + "\n".join(errors)
        return reports

    try:
        for process in processes:
            process.start()
        yield collect
    finally:
        barrier.abort()
        for process in processes:
            process.join(JOIN_TIMEOUT)
            if process.is_alive():
                process.terminate()
                process.join(JOIN_TIMEOUT)
        results.close()
        results.join_thread()


def _events(reports: list[dict[str, Any]], event_name: str) -> list[dict[str, Any]]:
    return [e for r in reports for e in r["events"] if e.get("event_name") == event_name]


def test_concurrent_failures_from_many_processes_open_the_circuit_exactly_once(
    redis_url: str,
) -> None:
    """16 workers in 4 processes failing at once trip the breaker once, at exactly N failures.

    A racy store (read the count, then write it) would let several workers each see the
    threshold crossed, or count failures past the threshold; the Lua script makes the check and
    the increment one step, so exactly one caller moves the circuit from CLOSED to OPEN and the
    stored count stops at ``failure_threshold``.
    """
    # Given a CLOSED breaker with failure_threshold 7 shared by 4 processes x 4 threads
    threshold = 7
    config = {"failure_threshold": threshold, "timeout": 60.0}
    barrier = SPAWN.Barrier(WORKERS)

    # When every worker acquires and records failures at the same moment
    with _cluster(redis_url, "storm", config, _fail_together, barrier) as collect:
        reports = collect()

    # Then exactly one caller saw CLOSED -> OPEN, and no other transition happened
    opened = _events(reports, "circuit_breaker.opened")
    assert len(opened) == 1, opened
    assert opened[0]["from_state"] == CircuitState.CLOSED.value
    assert not _events(reports, "circuit_breaker.half_open")
    assert not _events(reports, "circuit_breaker.closed")
    # And the stored consecutive count stopped at the threshold, while every report was counted
    client = redis.Redis.from_url(redis_url)
    try:
        stored = client.hmget(f"{PREFIX}:storm", ["state", "failure_count", "total_failures"])
    finally:
        client.close()
    reported = sum(o["failures_reported"] for r in reports for o in r["outcomes"])
    assert reported >= threshold
    assert stored == [b"open", str(threshold).encode(), str(reported).encode()]


def test_half_open_admits_exactly_max_calls_trials_across_processes_every_round(
    redis_url: str,
) -> None:
    """Whenever the timeout passes, 16 workers asking at once get exactly 2 trial slots.

    Every round all workers of the cluster ask together right after the OPEN timeout ended; the
    first look turns the circuit HALF_OPEN and hands out slots atomically, so exactly
    ``half_open_max_calls`` are admitted and the rest are refused. The trials then fail, which
    reopens the circuit for a fresh timeout, and the next round begins once it has passed.
    """
    # Given a breaker that allows 2 trials, opened by one failure, with a 0.2 s timeout
    max_calls = 2
    config = {
        "failure_threshold": 1,
        "timeout": 0.2,
        "half_open_max_calls": max_calls,
        "half_open_retry_after": 0.1,
    }
    backend = RedisBackend.from_url(redis_url, prefix=PREFIX, local_view=False)
    try:
        breaker = CircuitBreaker("trials", CircuitBreakerConfig(**config), backend=backend)
        breaker.record_failure_sync(breaker.acquire_sync())
        assert breaker.state is CircuitState.OPEN
        # The parent coordinates the rounds as the barrier's 17th party
        barrier = SPAWN.Barrier(WORKERS + 1)

        # When, round after round, all 16 workers ask once together after the timeout passed
        with _cluster(redis_url, "trials", config, _ask_in_rounds, barrier) as collect:
            for _ in range(HALF_OPEN_ROUNDS):
                _wait_out_the_timeout(breaker)
                barrier.wait(BARRIER_TIMEOUT)  # go
                barrier.wait(BARRIER_TIMEOUT)  # everybody has asked
                barrier.wait(BARRIER_TIMEOUT)  # the trials have failed
            reports = collect()
        # (the stored state: nobody looks again, so the lazy move to HALF_OPEN never happens)
        stored_state = backend.client.hget(f"{PREFIX}:trials", "state")
    finally:
        backend.close()

    # Then every round admitted exactly half_open_max_calls trials and refused everyone else
    per_round = [
        Counter(o["verdicts"][i] for r in reports for o in r["outcomes"])
        for i in range(HALF_OPEN_ROUNDS)
    ]
    expected = Counter({"trial": max_calls, "rejected while half_open": WORKERS - max_calls})
    assert per_round == [expected] * HALF_OPEN_ROUNDS
    # And each round one caller turned the circuit HALF_OPEN and one failed trial reopened it
    assert len(_events(reports, "circuit_breaker.half_open")) == HALF_OPEN_ROUNDS
    reopened = _events(reports, "circuit_breaker.opened")
    assert len(reopened) == HALF_OPEN_ROUNDS
    assert {e["from_state"] for e in reopened} == {CircuitState.HALF_OPEN.value}
    assert stored_state == b"open"


def _wait_out_the_timeout(breaker: CircuitBreaker) -> None:
    """Wait until the OPEN circuit's own timeout has passed (it says how long via retry_after)."""
    stats = breaker.stats
    assert stats.state is CircuitState.OPEN, stats
    assert stats.retry_after is not None
    time.sleep(stats.retry_after + TIMEOUT_MARGIN)


def test_a_circuit_opened_by_a_process_without_a_local_view_is_seen_by_other_views_at_once(
    redis_url: str,
) -> None:
    """The README promises that every script that changes a view publishes the new view.

    A process that sends every decision to Redis (``local_view=False``, e.g. a CLI or a
    one-off job) still changes the shared state; if it does not publish, every worker keeps
    admitting calls to a service that is known to be down for up to ``refresh_interval``.
    """
    # Given a worker whose view is live and refreshed only every 2 s, so only pub/sub can help
    config = CircuitBreakerConfig(failure_threshold=1, timeout=60.0)
    worker = RedisBackend.from_url(redis_url, prefix=PREFIX, refresh_interval=2.0)
    other = RedisBackend.from_url(redis_url, prefix=PREFIX, local_view=False)
    try:
        CircuitBreaker("quiet", config, backend=worker).call_sync(lambda: None)
        assert worker._watcher is not None and worker._watcher.live.wait(BARRIER_TIMEOUT)
        assert worker.admit_locally("quiet", config) is not None

        # When a process without a local view opens the circuit
        breaker = CircuitBreaker("quiet", config, backend=other)
        breaker.record_failure_sync(breaker.acquire_sync())
        assert breaker.state is CircuitState.OPEN

        # Then the worker's view stops admitting as soon as the change is delivered
        deadline = time.monotonic() + PUBSUB_DELAY
        while _admits_locally(worker, "quiet", config) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not _admits_locally(worker, "quiet", config)
    finally:
        worker.close()
        other.close()


def _admits_locally(backend: RedisBackend, name: str, config: CircuitBreakerConfig) -> bool:
    decision = backend.admit_locally(name, config)
    return decision is not None and decision.verdict.value == "admitted"
