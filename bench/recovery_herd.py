"""Recovery without a stampede: a backlog that arrived while the breaker was OPEN drains after
the service recovers without a burst of trials and re-deferrals.

Usage: ``python -m bench.recovery_herd [--messages N] [--timeout S]``

N tagged no-op messages are enqueued while the breaker is OPEN (held open ``timeout`` seconds);
a real Worker (8 threads) defers them; the service "recovers" when the timeout passes. Printed:
deferrals per message (mean, max), trials admitted in HALF_OPEN and the most that ran at once,
and the time from recovery to an empty queue relative to draining the same backlog with no
outage, all from one run on one embedded Redis.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import dramatiq
from dramatiq.middleware import CurrentMessage

from bench._harness import (
    QUEUE,
    WORKER_THREADS,
    flush,
    guarded_broker,
    quiet_logs,
    run_until,
    settings_for,
    stack_middleware,
)
from soulspot_jobs.deferral.options import DEFERRALS
from soulspot_jobs.embedded.server import EmbeddedRedis
from soulspot_jobs.middleware import CircuitBreakerMiddleware

#: Targets of the design.
MAX_MEAN_DEFERRALS = 1.2
MAX_DEFERRALS = 3
SERVICE = "slskd-api"


class Tally:
    """What the actor saw: deferrals per message, trials, trials at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deferrals: list[int] = []
        self.trials = 0
        self.trials_running = 0
        self.most_trials_at_once = 0
        self.first_run_at: float | None = None


def run(url: str, messages: int, outage: float | None) -> tuple[float, Tally, float]:
    """Drain ``messages`` (after an outage of ``outage`` seconds, or none); (seconds, tally, t0)."""
    flush(url)
    broker = guarded_broker(settings_for(url, SLSKD_API__HALF_OPEN_MAX_CALLS="1"))
    middleware = stack_middleware(broker, CircuitBreakerMiddleware)
    broker.add_middleware(CurrentMessage())
    tally = Tally()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service=SERVICE, max_retries=0)
    def noop() -> None:
        message = CurrentMessage.get_current_message()
        permit = middleware.current_permit()
        trial = permit is not None and permit.is_trial
        with tally.lock:
            tally.deferrals.append(message.options.get(DEFERRALS, 0))
            tally.first_run_at = tally.first_run_at or time.perf_counter()
            if trial:
                tally.trials += 1
                tally.trials_running += 1
                tally.most_trials_at_once = max(tally.most_trials_at_once, tally.trials_running)
        if trial:
            with tally.lock:
                tally.trials_running -= 1

    breaker = broker.breakers[SERVICE]
    recovery_at = time.perf_counter()
    if outage:
        breaker.record_failure_sync(breaker.acquire_sync(), hold_open=outage)
        recovery_at = time.perf_counter() + outage
    for _ in range(messages):
        noop.send()
    worker = dramatiq.Worker(broker, worker_threads=WORKER_THREADS, worker_timeout=100)
    run_until(worker, lambda: len(tally.deferrals) >= messages, timeout=600)
    done_at = time.perf_counter()
    worker.stop()
    broker.close()
    return done_at - recovery_at, tally, recovery_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=None, help="seconds OPEN")
    options = parser.parse_args()
    quiet_logs()
    n = options.messages
    with EmbeddedRedis() as server:
        baseline_s, _, _ = run(server.url, n, outage=None)
        # The outage must outlast enqueueing the whole backlog, so that every message arrives
        # while the breaker is OPEN: twice the time the baseline took to drain it, at least 2 s.
        outage = options.timeout or max(2.0, 2 * baseline_s)
        drain_s, tally, _ = run(server.url, n, outage=outage)

    deferrals = tally.deferrals
    mean, worst = statistics.fmean(deferrals), max(deferrals)
    never_deferred = sum(1 for d in deferrals if d == 0)
    print(f"messages: {n}, breaker OPEN for {outage:.1f} s, worker threads: {WORKER_THREADS}")
    ok = "PASS" if mean <= MAX_MEAN_DEFERRALS else "FAIL"
    print(f"deferrals per message: mean {mean:.3f} (target <= {MAX_MEAN_DEFERRALS}) {ok}")
    ok = "PASS" if worst <= MAX_DEFERRALS else "FAIL"
    print(f"                       max  {worst} (target <= {MAX_DEFERRALS}) {ok}")
    print(f"messages never deferred (arrived after recovery): {never_deferred}")
    ok = "PASS" if tally.most_trials_at_once <= 1 else "FAIL"
    print(
        f"HALF_OPEN trials: {tally.trials}, at most {tally.most_trials_at_once} at once "
        f"(half_open_max_calls 1) {ok}"
    )
    print(
        f"recovery to empty queue: {drain_s:.2f} s; same backlog, no outage: {baseline_s:.2f} s "
        f"({drain_s / baseline_s:.2f}x)"
    )
    print()
    print(f"| recovery of {n} deferred messages | value |")
    print("| --- | --- |")
    print(f"| deferrals per message, mean / max | {mean:.3f} / {worst} |")
    print(f"| HALF_OPEN trials (at most at once) | {tally.trials} ({tally.most_trials_at_once}) |")
    print(
        f"| recovery to empty queue vs no outage | {drain_s:.2f} s vs {baseline_s:.2f} s "
        f"({drain_s / baseline_s:.2f}x) |"
    )


if __name__ == "__main__":
    main()
