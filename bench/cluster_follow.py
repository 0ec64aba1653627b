"""How fast a cluster of worker processes follows a breaker: a failure rate crossing its
threshold, and an operator's mode change.

Usage: ``python -m bench.cluster_follow [--workers N] [--rounds R]``

Starts its own ``redis-server`` on loopback and ``--workers`` spawned processes (8 by default),
each with its own ``RedisBackend`` at the production refresh and flush intervals. Then, for
``--rounds`` rounds each:

* **trip latency**: every worker calls a healthy service every 4 ms, then every call fails; the
  breaker has a count window (100 calls, at least 40, 50 %). The moment the cluster's calls, in
  time order, cross the threshold is computed from every worker's own record of its calls; the
  latency of a worker is when its first call was refused, after that moment. The baseline is the
  design's consecutive-failure breaker (``failure_threshold`` 20) in the same run, each failure
  one script.
* **mode latency**: an operator (a process without a local view) switches the mode between
  ``disabled`` and ``normal``; the latency of a worker is when its next call saw the new mode.

Prints p50, p99 and max, PASS / FAIL against the goal (1 s, p99), and a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import statistics
import time
from typing import Any

import structlog

from soulspot_jobs.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    RedisBackend,
)
from soulspot_jobs.embedded.server import EmbeddedRedis

#: The goal: every worker follows within this many seconds (p99).
FOLLOW_WITHIN = 1.0
WAIT = 60.0
PACE = 0.004
HEALTHY_FOR = 0.5
PREFIX = "bench:cluster"
WINDOW = {
    "sliding_window_type": "count",
    "sliding_window_size": 100,
    "minimum_calls": 40,
    "failure_rate_threshold": 50.0,
}
CONSECUTIVE = {"failure_threshold": 20}
MODE_SWITCHES = 10
SPAWN = multiprocessing.get_context("spawn")


class ServiceDown(Exception):
    """The guarded service failed."""


def _fail() -> None:
    raise ServiceDown


def _quiet() -> None:
    """The breaker's warnings (opened, blocked, mode set) are the measurement, not its output."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))


def _worker(url: str, fields: dict[str, Any], rounds: int, barrier: Any, results: Any) -> None:
    """One worker process: ``rounds`` trip rounds, then the mode switches."""
    _quiet()
    backend = RedisBackend.from_url(url, prefix=PREFIX)
    try:
        breaker = CircuitBreaker("svc", CircuitBreakerConfig(**fields), backend=backend)
        breaker.call_sync(lambda: None)
        if backend._watcher is None or not backend._watcher.live.wait(WAIT):
            raise SystemExit("the view watcher did not go live")
        for _ in range(rounds):
            barrier.wait(WAIT)  # the breaker was reset: go
            start = time.time()
            outcomes, refused_at = [], None
            while time.time() - start < WAIT:
                failing = time.time() - start >= HEALTHY_FOR
                try:
                    breaker.call_sync(_fail if failing else (lambda: None))
                except CircuitBreakerError:
                    refused_at = time.time()
                    break
                except ServiceDown:
                    pass
                outcomes.append((time.time(), failing))
                time.sleep(PACE)
            results.put(("trip", outcomes, refused_at))
            barrier.wait(WAIT)  # everybody was refused
        for switch in range(MODE_SWITCHES):
            barrier.wait(WAIT)
            disabled = switch % 2 == 0
            while breaker.acquire_sync().disabled != disabled:
                time.sleep(0.001)
            results.put(("mode", switch, time.time()))
    finally:
        backend.close()


def _crossing(outcomes: list[tuple[float, bool]], fields: dict[str, Any]) -> float:
    """When the cluster's calls in time order first met the breaker's opening rule."""
    window: list[bool] = []
    run = 0
    for at, failed in sorted(outcomes):
        if "sliding_window_type" in fields:
            window = [*window, failed][-fields["sliding_window_size"] :]
            enough = len(window) >= fields["minimum_calls"]
            if enough and sum(window) * 100 >= fields["failure_rate_threshold"] * len(window):
                return at
        else:
            run = run + 1 if failed else 0
            if run >= fields["failure_threshold"]:
                return at
    raise SystemExit("the calls never crossed the threshold")


def measure(url: str, fields: dict[str, Any], workers: int, rounds: int) -> dict[str, list]:
    """Trip and mode latencies (seconds) of every worker in every round."""
    barrier = SPAWN.Barrier(workers + 1)
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=_worker, args=(url, fields, rounds, barrier, results), daemon=True)
        for _ in range(workers)
    ]
    operator_backend = RedisBackend.from_url(url, prefix=PREFIX, local_view=False)
    operator = CircuitBreaker("svc", CircuitBreakerConfig(**fields), backend=operator_backend)
    trips, modes = [], []
    try:
        for process in processes:
            process.start()
        for _ in range(rounds):
            operator.reset_sync()
            barrier.wait(WAIT)
            reports = [results.get(timeout=WAIT) for _ in processes]
            crossed = _crossing([o for r in reports for o in r[1]], fields)
            trips += [r[2] - crossed for r in reports if r[2] is not None]
            barrier.wait(WAIT)
        operator.reset_sync()
        for switch in range(MODE_SWITCHES):
            barrier.wait(WAIT)
            switched = time.time()
            operator.set_mode_sync("disabled" if switch % 2 == 0 else "normal")
            modes += [results.get(timeout=WAIT)[2] - switched for _ in processes]
    finally:
        barrier.abort()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
        operator_backend.close()
    return {"trip": trips, "mode": modes}


def _summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return statistics.median(ordered), p99, ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    _quiet()
    started = time.monotonic()
    rows = []
    verdicts = []
    with EmbeddedRedis() as server:
        print(f"redis-server on {server.url}; {args.workers} worker processes")
        for label, fields in (("consecutive (baseline)", CONSECUTIVE), ("count window", WINDOW)):
            latencies = measure(server.url, fields, args.workers, args.rounds)
            for kind in ("trip", "mode"):
                if kind == "mode" and label != "count window":
                    continue
                p50, p99, worst = _summary(latencies[kind])
                n = len(latencies[kind])
                print(
                    f"  {label:<24} {kind} latency: p50 {p50 * 1000:7.1f} ms, "
                    f"p99 {p99 * 1000:7.1f} ms, max {worst * 1000:7.1f} ms ({n} samples)"
                )
                rows.append(
                    f"| {label} | {kind} | {n} | {p50 * 1000:.0f} | {p99 * 1000:.0f} "
                    f"| {worst * 1000:.0f} |"
                )
                if label == "count window":
                    verdicts.append((f"{kind} latency p99 <= {FOLLOW_WITHIN:.0f} s", p99))
    print("\n## Targets")
    for text, value in verdicts:
        mark = "PASS" if value <= FOLLOW_WITHIN else "FAIL"
        print(f"  [{mark}] {text}: {value * 1000:.0f} ms")
    print("\n## Markdown table for bench/README.md\n")
    print("| Breaker | Latency of | samples | p50 (ms) | p99 (ms) | max (ms) |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\n(total run time {time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
