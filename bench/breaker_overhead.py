"""What a circuit breaker costs per guarded call, compared with no breaker and with pybreaker.

Usage: ``python -m bench.breaker_overhead [--calls N]``

Starts its own throwaway ``redis-server`` on loopback and, from one run on that one server,
prints:

* microseconds per guarded call on the success path: no breaker, ``CircuitBreaker`` on
  ``MemoryBackend`` and on ``RedisBackend`` (local view live), pybreaker in memory and pybreaker
  with ``CircuitRedisStorage``;
* Redis commands per call on the healthy path and per failure, from ``INFO commandstats``
  deltas (Redis counts the commands a Lua script runs on top of its EVALSHA, so round trips are
  reported separately as the EVALSHA count);
* wall time of 4 threads each making one 50 ms call through a CLOSED breaker;
* the staleness window: how long another process's local view keeps admitting after the
  circuit opened, with pub/sub and with pub/sub lost (only the periodic refresh);
* PASS / FAIL against the design's targets, and a markdown table for bench/README.md.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import pybreaker
import redis
import structlog

from soulspot_jobs.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    MemoryBackend,
    RedisBackend,
)
from soulspot_jobs.circuit_breaker.backends.redis import STALE_AFTER_INTERVALS
from soulspot_jobs.circuit_breaker.state import Verdict
from soulspot_jobs.embedded.server import EmbeddedRedis
from tests.redis_stats import command_calls

#: Default number of calls timed for the in-memory variants (the pybreaker-redis variant makes a
#: tenth of them: each of its calls is several round trips).
DEFAULT_CALLS = 200_000
#: Failures recorded to count Redis commands per failure.
FAILURES = 2_000
#: Seconds of the refresh interval of the Redis backend under test (the production default).
REFRESH_INTERVAL = 1.0
#: The healthy Redis phase runs at least this many refresh intervals, so that the watcher's
#: periodic refreshes and count flushes are part of the amortised command count.
HEALTHY_MIN_INTERVALS = 2.5
#: Threads, and seconds each guarded call sleeps, in the parallelism check.
THREADS = 4
SLEEP = 0.05
#: Runs of the parallelism check; the median is reported.
PARALLEL_RUNS = 5
#: Trials of the staleness measurement with pub/sub, and with pub/sub lost.
STALENESS_TRIALS = 50
LOST_PUBSUB_TRIALS = 8
#: Seconds to wait for a watcher to go live or a view to catch up before giving up.
WAIT_TIMEOUT = 10.0
#: Refresh interval (seconds) of the backend of the failure phase, longer than the phase lasts.
FAILURE_PHASE_REFRESH = 120.0
#: A failure threshold that is never reached, so failure phases stay CLOSED.
NEVER = 10**9

#: Targets of the design (see bench/README.md).
MAX_COMMANDS_PER_HEALTHY_CALL = 0.05
MIN_SPEEDUP_OVER_PYBREAKER_REDIS = 50.0
MAX_ROUND_TRIPS_PER_FAILURE = 1.0
MAX_MEMORY_OVERHEAD_US = 5.0
MAX_PARALLEL_WALL_MS = 60.0
MAX_ROUND_TRIPS_PER_WINDOWED_CALL = 0.05
#: A failure-rate window, as ``CIRCUIT_BREAKER_SLIDING_WINDOW_TYPE=count`` configures it.
WINDOW_CONFIG = CircuitBreakerConfig(
    sliding_window_type="count", sliding_window_size=100, minimum_calls=20
)


def noop() -> int:
    """The guarded function of the success path: as cheap as a call gets."""
    return 1


def boom() -> None:
    """The guarded function of the failure path."""
    raise RuntimeError("upstream failed")


def nap() -> None:
    """The guarded function of the parallelism check: 50 ms of I/O-like waiting."""
    time.sleep(SLEEP)


# -- measuring -------------------------------------------------------------------------------


def time_calls(
    call: Callable[[], object], calls: int, min_seconds: float = 0.0
) -> tuple[int, float]:
    """Make at least ``calls`` calls (and for at least ``min_seconds``); return (calls, seconds)."""
    chunk = 1_000
    done = 0
    start = time.perf_counter()
    while True:
        for _ in range(chunk):
            call()
        done += chunk
        elapsed = time.perf_counter() - start
        if done >= calls and elapsed >= min_seconds:
            return done, elapsed


@dataclass
class CommandCount:
    """Redis commands run between :meth:`reset` and :meth:`read`, from ``INFO commandstats``."""

    client: redis.Redis
    total: int = 0
    evalsha: int = 0
    by_command: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.client.config_resetstat()

    def read(self) -> CommandCount:
        # the measuring commands themselves (CONFIG RESETSTAT, INFO) are not the breaker's
        self.by_command = dict(command_calls(self.client))
        self.total = sum(self.by_command.values())
        self.evalsha = self.by_command.get("evalsha", 0)
        return self


@contextmanager
def counting(client: redis.Redis) -> Iterator[CommandCount]:
    count = CommandCount(client)
    count.reset()
    yield count
    count.read()


def wait_live(backend: RedisBackend) -> None:
    """Block until the backend's view watcher is subscribed and has refreshed once."""
    watcher = backend._watcher
    if watcher is None or not watcher.live.wait(WAIT_TIMEOUT):
        raise SystemExit("the Redis backend's view watcher did not go live")


def parallel_wall_ms(call: Callable[[], object]) -> float:
    """Median wall time (ms) of ``THREADS`` threads each making one call, started together."""
    walls = []
    for _ in range(PARALLEL_RUNS):
        start_line = threading.Barrier(THREADS + 1)

        def worker(line: threading.Barrier = start_line) -> None:
            line.wait()
            call()

        threads = [threading.Thread(target=worker) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        start_line.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        walls.append((time.perf_counter() - start) * 1000)
    return statistics.median(walls)


# -- the phases --------------------------------------------------------------------------------


@dataclass
class Results:
    us: dict[str, float] = field(default_factory=dict)
    healthy_commands: dict[str, float] = field(default_factory=dict)
    failure_commands: dict[str, float] = field(default_factory=dict)
    failure_round_trips: dict[str, float] = field(default_factory=dict)
    parallel_ms: dict[str, float] = field(default_factory=dict)
    staleness_ms: dict[str, tuple[float, float]] = field(default_factory=dict)
    healthy_round_trips: dict[str, float] = field(default_factory=dict)


def success_path(url: str, stats: redis.Redis, calls: int, results: Results) -> None:
    print(f"\n## Success path ({calls:,} calls; pybreaker+redis: {calls // 10:,})")

    def report(label: str, done: int, seconds: float) -> None:
        results.us[label] = seconds / done * 1e6
        print(f"  {label:<28} {results.us[label]:10.3f} us/call   ({done:,} calls)")

    report("no breaker", *time_calls(noop, calls))

    memory = CircuitBreaker("bench-memory", backend=MemoryBackend())
    report("ours, MemoryBackend", *time_calls(lambda: memory.call_sync(noop), calls))

    backend = RedisBackend.from_url(url, refresh_interval=REFRESH_INTERVAL)
    try:
        ours = CircuitBreaker("bench-redis", backend=backend)
        ours.call_sync(noop)  # the first call per breaker is a round trip; it starts the watcher
        wait_live(backend)
        with counting(stats) as count:
            done, seconds = time_calls(
                lambda: ours.call_sync(noop), calls, HEALTHY_MIN_INTERVALS * REFRESH_INTERVAL
            )
        report("ours, RedisBackend", done, seconds)
        results.healthy_commands["ours, RedisBackend"] = count.total / done
        print(
            f"  {'':<28} {count.total} Redis commands in {seconds:.1f} s "
            f"(watcher refreshes and count flushes): {count.total / done:.2e} per call "
            f"{dict(sorted(count.by_command.items()))}"
        )
    finally:
        backend.close()

    windowed = RedisBackend.from_url(url, refresh_interval=REFRESH_INTERVAL)
    try:
        label = "ours, RedisBackend, window"
        ours = CircuitBreaker("bench-window", WINDOW_CONFIG, backend=windowed)
        ours.call_sync(noop)
        wait_live(windowed)
        with counting(stats) as count:
            done, seconds = time_calls(
                lambda: ours.call_sync(noop), calls, HEALTHY_MIN_INTERVALS * REFRESH_INTERVAL
            )
        report(label, done, seconds)
        results.healthy_commands[label] = count.total / done
        results.healthy_round_trips[label] = count.evalsha / done
        print(
            f"  {'':<28} {count.evalsha} scripts (batched success flushes and refreshes) in "
            f"{seconds:.1f} s: {count.evalsha / done:.2e} round trips per call "
            f"{dict(sorted(count.by_command.items()))}"
        )
    finally:
        windowed.close()

    plain = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    report("pybreaker, memory", *time_calls(lambda: plain.call(noop), calls))

    client = redis.Redis.from_url(url)
    try:
        storage = pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED, client, namespace="bench-healthy"
        )
        shared = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60, state_storage=storage)
        shared.call(noop)
        with counting(stats) as count:
            done, seconds = time_calls(lambda: shared.call(noop), calls // 10)
        report("pybreaker, CircuitRedisStorage", done, seconds)
        results.healthy_commands["pybreaker, CircuitRedisStorage"] = count.total / done
        print(
            f"  {'':<28} {count.total / done:.2f} Redis commands per call "
            f"{dict(sorted(count.by_command.items()))}"
        )
    finally:
        client.close()


def failure_path(url: str, stats: redis.Redis, results: Results) -> None:
    print(f"\n## Failure path ({FAILURES:,} failures, circuit kept CLOSED)")

    def fail(call: Callable[[], object]) -> None:
        with suppress(RuntimeError):
            call()

    # a refresh interval longer than the phase: a periodic refresh is the watcher's cost, counted
    # on the healthy path above, not a failure's
    backend = RedisBackend.from_url(url, refresh_interval=FAILURE_PHASE_REFRESH)
    try:
        config = CircuitBreakerConfig(failure_threshold=NEVER)
        ours = CircuitBreaker("bench-failures", config, backend=backend)
        ours.call_sync(noop)
        fail(lambda: ours.call_sync(boom))  # loads the script: its NOSCRIPT retry is not counted
        wait_live(backend)
        with counting(stats) as count:
            for _ in range(FAILURES):
                fail(lambda: ours.call_sync(boom))
        label = "ours, RedisBackend"
        results.failure_commands[label] = count.total / FAILURES
        results.failure_round_trips[label] = count.evalsha / FAILURES
        print(
            f"  {label:<30} {count.total / FAILURES:5.2f} commands, "
            f"{count.evalsha / FAILURES:5.2f} round trips (EVALSHA) per failure "
            f"{dict(sorted(count.by_command.items()))}"
        )
    finally:
        backend.close()

    client = redis.Redis.from_url(url)
    try:
        storage = pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED, client, namespace="bench-failures"
        )
        shared = pybreaker.CircuitBreaker(fail_max=NEVER, reset_timeout=60, state_storage=storage)
        fail(lambda: shared.call(boom))
        with counting(stats) as count:
            for _ in range(FAILURES):
                fail(lambda: shared.call(boom))
        label = "pybreaker, CircuitRedisStorage"
        # no scripts and no pipelines: every command is its own round trip
        results.failure_commands[label] = count.total / FAILURES
        results.failure_round_trips[label] = count.total / FAILURES
        print(
            f"  {label:<30} {count.total / FAILURES:5.2f} commands = round trips per failure "
            f"{dict(sorted(count.by_command.items()))}"
        )
    finally:
        client.close()


def parallelism(url: str, results: Results) -> None:
    print(
        f"\n## {THREADS} threads x one {SLEEP * 1000:.0f} ms call, CLOSED breaker "
        f"(median of {PARALLEL_RUNS})"
    )
    memory = CircuitBreaker("bench-parallel", backend=MemoryBackend())
    backend = RedisBackend.from_url(url, refresh_interval=REFRESH_INTERVAL)
    client = redis.Redis.from_url(url)
    try:
        ours = CircuitBreaker("bench-parallel", backend=backend)
        ours.call_sync(noop)
        wait_live(backend)
        plain = pybreaker.CircuitBreaker()
        shared = pybreaker.CircuitBreaker(
            state_storage=pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, client, namespace="bench-parallel"
            )
        )
        for label, call in (
            ("ours, MemoryBackend", lambda: memory.call_sync(nap)),
            ("ours, RedisBackend", lambda: ours.call_sync(nap)),
            ("pybreaker, memory", lambda: plain.call(nap)),
            ("pybreaker, CircuitRedisStorage", lambda: shared.call(nap)),
        ):
            results.parallel_ms[label] = parallel_wall_ms(call)
            print(f"  {label:<30} {results.parallel_ms[label]:7.1f} ms wall")
    finally:
        backend.close()
        client.close()


def staleness(url: str, results: Results) -> None:
    """Time from backend A starting to open the circuit until backend B's view refuses.

    A and B have separate clients, each with its own view watcher, as two worker processes do.
    B is polled with ``admit_locally`` in a loop from A's thread; the window is measured from
    the moment A sends the failure that opens the circuit (an upper bound of the true window,
    which starts when the script runs).
    """
    config = CircuitBreakerConfig(failure_threshold=1, timeout=60.0)
    print(f"\n## Staleness window of another process's local view (refresh {REFRESH_INTERVAL} s)")

    def measure(a: RedisBackend, b: RedisBackend, name: str, trials: int) -> list[float]:
        breaker_a = CircuitBreaker(name, config, backend=a)
        breaker_b = CircuitBreaker(name, config, backend=b)
        breaker_a.call_sync(noop)
        breaker_b.call_sync(noop)
        wait_live(b)
        windows = []
        for _ in range(trials):
            breaker_a.reset_sync()
            # wait until B's view shows the reset (it admits locally again)
            deadline = time.monotonic() + WAIT_TIMEOUT
            while not admits(b, name):
                if time.monotonic() > deadline:
                    raise SystemExit("B's view never saw the reset")
                time.sleep(0.001)
            permit = breaker_a.acquire_sync()
            start = time.perf_counter()
            breaker_a.record_failure_sync(permit)
            deadline = time.monotonic() + WAIT_TIMEOUT
            while admits(b, name):
                if time.monotonic() > deadline:
                    raise SystemExit("B's view never saw the circuit open")
                # B's watcher is a thread of this process: let it run, as it would in its own
                # process, instead of waiting out the interpreter's 5 ms switch interval
                time.sleep(0)
            windows.append((time.perf_counter() - start) * 1000)
        return windows

    def admits(backend: RedisBackend, name: str) -> bool:
        decision = backend.admit_locally(name, config)
        return decision is not None and decision.verdict is Verdict.ADMITTED

    def summarise(label: str, windows: list[float]) -> None:
        median, worst = statistics.median(windows), max(windows)
        results.staleness_ms[label] = (median, worst)
        print(f"  {label:<44} median {median:8.2f} ms, max {worst:8.2f} ms ({len(windows)} trials)")

    a = RedisBackend.from_url(url, refresh_interval=REFRESH_INTERVAL)
    b = RedisBackend.from_url(url, refresh_interval=REFRESH_INTERVAL)
    try:
        summarise("pub/sub delivered", measure(a, b, "bench-stale", STALENESS_TRIALS))
    finally:
        a.close()
        b.close()

    # A publishes its changes on a channel nobody listens to, so B learns only from its
    # periodic refresh: this is what B sees whenever a pub/sub message is lost.
    a = RedisBackend.from_url(url, local_view=False)
    a.channel = f"{a.channel}:nobody-listens"
    b = RedisBackend.from_url(url, refresh_interval=REFRESH_INTERVAL)
    try:
        summarise(
            "pub/sub lost (refresh only)",
            measure(a, b, "bench-stale-lost", LOST_PUBSUB_TRIALS),
        )
    finally:
        a.close()
        b.close()
    bound = REFRESH_INTERVAL * STALE_AFTER_INTERVALS
    print(
        f"  documented bound when pub/sub is lost: refresh_interval x {STALE_AFTER_INTERVALS} "
        f"= {bound:.1f} s (a watcher silent that long is distrusted; every call goes to Redis)"
    )


# -- verdicts and the bench/README.md table ------------------------------------------------------


def targets(results: Results) -> list[tuple[str, str, bool]]:
    us = results.us
    speedup = us["pybreaker, CircuitRedisStorage"] / us["ours, RedisBackend"]
    memory_overhead = us["ours, MemoryBackend"] - us["no breaker"]
    healthy = results.healthy_commands["ours, RedisBackend"]
    round_trips = results.failure_round_trips["ours, RedisBackend"]
    parallel = max(
        results.parallel_ms["ours, MemoryBackend"], results.parallel_ms["ours, RedisBackend"]
    )
    windowed = results.healthy_round_trips["ours, RedisBackend, window"]
    window_speedup = us["pybreaker, CircuitRedisStorage"] / us["ours, RedisBackend, window"]
    return [
        (
            f"with a failure-rate window <= {MAX_ROUND_TRIPS_PER_WINDOWED_CALL} round trips/call",
            f"{windowed:.2e}",
            windowed <= MAX_ROUND_TRIPS_PER_WINDOWED_CALL,
        ),
        (
            f"with a window >= {MIN_SPEEDUP_OVER_PYBREAKER_REDIS:.0f}x less time/call than "
            "pybreaker+CircuitRedisStorage",
            f"{window_speedup:.0f}x",
            window_speedup >= MIN_SPEEDUP_OVER_PYBREAKER_REDIS,
        ),
        (
            f"RedisBackend healthy path <= {MAX_COMMANDS_PER_HEALTHY_CALL} Redis commands/call",
            f"{healthy:.2e}",
            healthy <= MAX_COMMANDS_PER_HEALTHY_CALL,
        ),
        (
            f">= {MIN_SPEEDUP_OVER_PYBREAKER_REDIS:.0f}x less time/call than "
            "pybreaker+CircuitRedisStorage",
            f"{speedup:.0f}x",
            speedup >= MIN_SPEEDUP_OVER_PYBREAKER_REDIS,
        ),
        (
            f"<= {MAX_ROUND_TRIPS_PER_FAILURE:.0f} round trip per failure",
            f"{round_trips:.2f}",
            round_trips <= MAX_ROUND_TRIPS_PER_FAILURE,
        ),
        (
            f"MemoryBackend within {MAX_MEMORY_OVERHEAD_US:.0f} us of no breaker",
            f"+{memory_overhead:.2f} us",
            memory_overhead <= MAX_MEMORY_OVERHEAD_US,
        ),
        (
            f"{THREADS} threads x {SLEEP * 1000:.0f} ms in parallel "
            f"(<= {MAX_PARALLEL_WALL_MS:.0f} ms)",
            f"{parallel:.1f} ms",
            parallel <= MAX_PARALLEL_WALL_MS,
        ),
    ]


def markdown(results: Results) -> str:
    us = results.us
    none = us["no breaker"]
    rows = [
        "| Variant | us per call | overhead (us) | Redis cmds / healthy call "
        "| cmds / failure | round trips / failure | 4 x 50 ms threads (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label in (
        "no breaker",
        "ours, MemoryBackend",
        "ours, RedisBackend",
        "ours, RedisBackend, window",
        "pybreaker, memory",
        "pybreaker, CircuitRedisStorage",
    ):
        healthy = results.healthy_commands.get(label)
        failure = results.failure_commands.get(label)
        trips = results.failure_round_trips.get(label)
        parallel = results.parallel_ms.get(label)
        rows.append(
            f"| {label} | {us[label]:.2f} | {us[label] - none:.2f} "
            f"| {'-' if healthy is None else f'{healthy:.2g}'} "
            f"| {'-' if failure is None else f'{failure:.1f}'} "
            f"| {'-' if trips is None else f'{trips:.1f}'} "
            f"| {'-' if parallel is None else f'{parallel:.0f}'} |"
        )
    rows.append("")
    for label, (median, worst) in results.staleness_ms.items():
        rows.append(
            f"Staleness of another process's view, {label}: median {median:.1f} ms, "
            f"max {worst:.1f} ms."
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calls",
        type=int,
        default=DEFAULT_CALLS,
        help=f"calls timed per in-memory variant (default {DEFAULT_CALLS:,})",
    )
    args = parser.parse_args()
    # the staleness phase opens and resets breakers many times: keep its log lines quiet
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))

    started = time.perf_counter()
    results = Results()
    with EmbeddedRedis() as server:
        print(f"redis-server on {server.url}")
        stats = redis.Redis.from_url(server.url)
        try:
            success_path(server.url, stats, max(args.calls, 1_000), results)
            failure_path(server.url, stats, results)
            parallelism(server.url, results)
            staleness(server.url, results)
        finally:
            stats.close()

    us = results.us
    print("\n## Ratios")
    print(
        f"  pybreaker+redis / ours+redis: "
        f"{us['pybreaker, CircuitRedisStorage'] / us['ours, RedisBackend']:.0f}x"
    )
    for label in ("ours, MemoryBackend", "ours, RedisBackend"):
        print(f"  {label} minus no breaker: {us[label] - us['no breaker']:.2f} us")

    print("\n## Targets")
    for label, value, passed in targets(results):
        print(f"  [{'PASS' if passed else 'FAIL'}] {label}: {value}")

    print("\n## Markdown table for bench/README.md\n")
    print(markdown(results))
    print(f"\n(total run time {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
