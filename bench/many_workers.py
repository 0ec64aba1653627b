"""Many workers on one Redis: 4 worker processes x 8 threads, with and without the middleware.

Usage: ``python -m bench.many_workers [--messages N] [--processes P] [--rounds R]``

One embedded Redis holds Dramatiq's queue and the breakers. N tagged no-op messages are enqueued,
then P worker processes (8 threads each) drain them; the time runs from the moment every process
is ready to the last message. Each round runs plain Dramatiq and ``build_broker`` (breaker
CLOSED), in alternating order; the ratio is given for the best run of each and as the median of
the rounds' ratios (on a shared machine single runs vary by tens of percent).

A third run puts the breakers on a Redis of their own, so that its ``INFO commandstats`` counts
the breakers' commands alone, after a warm-up (each process's first messages, while its breaker
view is not live yet): per message and per second of each worker process. With Redis's
rate for those commands, measured last on the same machine, that gives how many worker
processes one Redis serves before the breakers (not the broker) would saturate it.

The defaults (10,000 messages, 5 rounds) take about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import statistics
import threading
import time
from dataclasses import dataclass

import dramatiq
import redis

from bench._harness import QUEUE, WORKER_THREADS, flush, plain_broker, quiet_logs, settings_for
from soulspot_jobs.broker import build_broker
from soulspot_jobs.circuit_breaker import CircuitBreakerConfig, RedisBackend
from soulspot_jobs.embedded.server import EmbeddedRedis
from tests.redis_stats import command_calls

#: Target: throughput with the middleware relative to plain Dramatiq, with many workers.
MIN_THROUGHPUT_RATIO = 0.95
SERVICE = "slskd-api"
#: Seconds the main process waits for all workers to boot, and for a run to end.
BOOT_TIMEOUT = 60.0
RUN_TIMEOUT = 600.0
#: Share of the messages run before the breakers' commands are counted: each process's first
#: messages go to Redis until its breaker view is live (a one-off per process, not a rate).
WARM_UP = 0.25


def _declare(broker: dramatiq.Broker, guarded: bool, on_run: object) -> dramatiq.Actor:
    options = {"service": SERVICE} if guarded else {}

    def noop() -> None:
        on_run()  # type: ignore[operator]

    return dramatiq.actor(
        noop, broker=broker, queue_name=QUEUE, actor_name="noop", max_retries=0, **options
    )


def _worker_process(
    url: str,
    breaker_url: str | None,
    guarded: bool,
    slot: int,
    counts: multiprocessing.Array,  # type: ignore[type-arg]
    ready: multiprocessing.synchronize.Semaphore,
    go: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
) -> None:
    """One worker process: build its broker, wait for ``go``, count its messages in ``slot``."""
    quiet_logs()
    settings = settings_for(url)
    backend = None
    if not guarded:
        broker: dramatiq.Broker = plain_broker(url, settings)
    elif breaker_url is None:
        broker = build_broker(settings)
    else:
        backend = RedisBackend.from_url(breaker_url, prefix=f"{settings.key_prefix}:breaker")
        broker = build_broker(settings, backend=backend)
    lock = threading.Lock()

    def on_run() -> None:
        with lock:
            counts[slot] += 1

    _declare(broker, guarded, on_run)
    worker = dramatiq.Worker(broker, worker_threads=WORKER_THREADS, worker_timeout=100)
    ready.release()
    go.wait()
    worker.start()
    stop.wait()
    worker.stop()
    broker.close()
    if backend is not None:
        backend.close()


@dataclass
class Run:
    seconds: float
    commands: int  # every command the main Redis ran (Dramatiq's and the breakers')
    breaker_commands: int  # on the breakers' own Redis after the warm-up (third run only)
    steady_messages: int  # messages run after the warm-up
    steady_seconds: float  # and the seconds they took


def run(
    url: str, messages: int, processes: int, guarded: bool, breaker_url: str | None = None
) -> Run:
    """Enqueue ``messages``, drain them with ``processes`` worker processes; the timings."""
    flush(url)
    settings = settings_for(url)
    producer = plain_broker(url, settings)
    noop = _declare(producer, False, None)
    for _ in range(messages):
        noop.send()
    producer.close()

    context = multiprocessing.get_context("spawn")
    counts = context.Array("q", processes, lock=False)
    ready, go, stop = context.Semaphore(0), context.Event(), context.Event()
    workers = [
        context.Process(
            target=_worker_process,
            args=(url, breaker_url, guarded, slot, counts, ready, go, stop),
            daemon=True,
        )
        for slot in range(processes)
    ]
    for process in workers:
        process.start()
    deadline = time.monotonic() + BOOT_TIMEOUT
    booted = 0
    while booted < processes:
        if ready.acquire(timeout=0.5):
            booted += 1
        elif any(w.exitcode is not None for w in workers) or time.monotonic() > deadline:
            stop.set()
            raise RuntimeError("a worker process died or did not boot in time")
    client = redis.Redis.from_url(url)
    client.config_resetstat()  # the bench's own setup, not the code under test
    breakers = redis.Redis.from_url(breaker_url) if breaker_url else None
    start = time.perf_counter()
    go.set()
    steady_from, steady_done = start, 0
    while (done := sum(counts)) < messages:
        now = time.perf_counter()
        if now - start > RUN_TIMEOUT:
            raise TimeoutError("the benchmark did not finish in time")
        if breakers is not None and not steady_done and done >= messages * WARM_UP:
            breakers.config_resetstat()  # from here on: steady state, every view is live
            steady_from, steady_done = now, done
        time.sleep(0.005)
    end = time.perf_counter()
    commands = sum(command_calls(client).values())
    breaker_commands = sum(command_calls(breakers).values()) if breakers is not None else 0
    stop.set()
    for process in workers:
        process.join(timeout=30)
    client.close()
    if breakers is not None:
        breakers.close()
    return Run(
        end - start, commands, breaker_commands, messages - steady_done, end - steady_from
    )


def breaker_command_rate(url: str, seconds: float = 3.0, threads: int = 8) -> float:
    """Breaker commands per second Redis runs for ``threads`` threads reading a breaker's state.

    Counted as the breakers' own cost is counted (``INFO commandstats``, so the commands inside
    the script count too): the resource the breakers of many processes would exhaust.
    """
    backend = RedisBackend.from_url(url, prefix="bench:breaker", local_view=False)
    config = CircuitBreakerConfig()
    end = time.perf_counter() + seconds

    def loop() -> None:
        while time.perf_counter() < end:
            backend.stats(SERVICE, config)

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    backend.client.config_resetstat()
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    commands = sum(command_calls(backend.client).values())
    backend.close()
    return commands / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n, p = args.messages, args.processes
    quiet_logs()
    with EmbeddedRedis() as server, EmbeddedRedis() as breakers:
        plain_runs, guarded_runs = [], []
        for round_ in range(args.rounds):
            # alternate which goes first, so a drift in the machine's load favours neither
            for guarded in (False, True) if round_ % 2 == 0 else (True, False):
                runs = guarded_runs if guarded else plain_runs
                runs.append(run(server.url, n, p, guarded=guarded))
        split = run(server.url, n, p, guarded=True, breaker_url=breakers.url)
        flush(breakers.url)
        capacity = breaker_command_rate(breakers.url)

    plain = min(plain_runs, key=lambda r: r.seconds)
    guarded = min(guarded_runs, key=lambda r: r.seconds)
    plain_rate, guarded_rate = n / plain.seconds, n / guarded.seconds
    ratio = guarded_rate / plain_rate
    paired = sorted(a.seconds / b.seconds for a, b in zip(plain_runs, guarded_runs, strict=True))
    median = statistics.median(paired)
    per_message = split.breaker_commands / split.steady_messages
    per_process_second = split.breaker_commands / split.steady_seconds / p
    served = capacity / per_process_second if per_process_second else float("inf")
    verdict = "PASS" if median >= MIN_THROUGHPUT_RATIO else "FAIL"
    print(f"messages: {n}, worker processes: {p} x {WORKER_THREADS} threads, one Redis")
    print(f"plain Dramatiq:          {plain_rate:8.0f} msg/s  {plain.commands / n:.2f} cmds/msg")
    print(
        f"with breaker middleware: {guarded_rate:8.0f} msg/s  {guarded.commands / n:.2f} cmds/msg"
    )
    print(f"throughput ratio (best of each): {ratio:.2f}  (target >= {MIN_THROUGHPUT_RATIO})")
    print(
        f"throughput ratio per round: {', '.join(f'{r:.2f}' for r in paired)}; "
        f"median {median:.2f} {verdict}"
    )
    print(
        f"breaker commands (own Redis, CLOSED): {per_message:.4f} per message, "
        f"{per_process_second:.1f} per second per worker process"
    )
    print(f"Redis rate for breaker commands (state reads, 8 threads): {capacity:.0f} per second")
    print(f"worker processes one Redis serves before the breakers saturate it: {served:.0f}")
    print()
    print("| metric | value |")
    print("| --- | --- |")
    print(f"| plain Dramatiq, {p} processes x {WORKER_THREADS} threads | {plain_rate:.0f} msg/s |")
    print(f"| with CircuitBreakerMiddleware (CLOSED) | {guarded_rate:.0f} msg/s ({ratio:.2f}x) |")
    print(f"| ratio per round, median | {median:.2f} ({args.rounds} rounds) |")
    print(f"| breaker commands per message while CLOSED | {per_message:.4f} |")
    print(f"| breaker commands per second per worker process | {per_process_second:.1f} |")
    print(f"| Redis rate for breaker commands (state reads) | {capacity:.0f}/s |")
    print(f"| worker processes before the breakers saturate Redis | {served:.0f} |")


if __name__ == "__main__":
    main()
