"""Throughput of tagged no-op messages with and without the circuit-breaker middleware, and the
cost of deferring a backlog while the breaker is OPEN.

Usage: ``python -m bench.middleware_throughput [--messages N]``

One embedded Redis, one run: N messages through a real Worker (8 threads) on plain Dramatiq, then
on a broker built by ``build_broker`` (breaker CLOSED, answered from the local view), then N
messages deferred while the breaker is OPEN. Round trips are counted client-side (each packed
command or pipeline sent by redis-py is one).
"""

from __future__ import annotations

import argparse
import threading

import dramatiq

from bench._harness import (
    QUEUE,
    WORKER_THREADS,
    RoundTrips,
    flush,
    guarded_broker,
    plain_broker,
    quiet_logs,
    run_until,
    settings_for,
)
from soulspot_jobs.redis_server import EmbeddedRedis

#: Target: throughput with the middleware relative to plain Dramatiq.
MIN_THROUGHPUT_RATIO = 0.90


def drain(broker: dramatiq.Broker, messages: int, **options: object) -> tuple[float, int]:
    """Enqueue ``messages`` no-op messages, run a worker until all ran; (seconds, round trips)."""
    ran = 0
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0, **options)
    def noop() -> None:
        nonlocal ran
        with lock:
            ran += 1

    for _ in range(messages):
        noop.send()
    worker = dramatiq.Worker(broker, worker_threads=WORKER_THREADS, worker_timeout=100)
    trips = RoundTrips()
    with trips.counting():
        seconds = run_until(worker, lambda: ran >= messages, timeout=300)
    worker.stop()
    return seconds, trips.count


def defer_backlog(
    url: str, messages: int, broker_url: str | None = None
) -> tuple[float, int, int]:
    """Time to defer ``messages`` while OPEN; (seconds, Redis round trips, deferred).

    Breakers live in the Redis at ``url``; messages there too, or on ``broker_url`` (RabbitMQ).
    """
    flush(url)
    settings = settings_for(url)
    if broker_url is not None:
        settings = settings.model_copy(update={"broker_url": broker_url})
    broker, middleware = guarded_broker(settings)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api", max_retries=0)
    def noop() -> None:
        raise AssertionError("must not run while the breaker is OPEN")

    breaker = middleware.breaker("slskd-api")
    breaker.record_failure_sync(breaker.acquire_sync(), hold_open=600.0)
    for _ in range(messages):
        noop.send()
    deferrals = 0
    lock = threading.Lock()

    def count_deferral(message: object, job: object) -> None:
        nonlocal deferrals
        with lock:
            deferrals += 1

    # counted in memory: polling must not add round trips
    middleware.deferrals.on_defer = count_deferral
    worker = dramatiq.Worker(broker, worker_threads=WORKER_THREADS, worker_timeout=100)
    trips = RoundTrips()
    with trips.counting():
        seconds = run_until(worker, lambda: deferrals >= messages, timeout=300)
    deferred = middleware.index.counts().get("slskd-api", 0)
    worker.stop()
    broker.close()
    return seconds, trips.count, deferred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5_000)
    n = parser.parse_args().messages
    quiet_logs()
    with EmbeddedRedis() as server:
        url = server.url
        flush(url)
        settings = settings_for(url)
        plain = plain_broker(url, settings)
        plain_s, plain_trips = drain(plain, n)
        plain.close()

        flush(url)
        guarded, _ = guarded_broker(settings)
        guarded_s, guarded_trips = drain(guarded, n, service="slskd-api")
        guarded.close()

        defer_s, defer_trips, deferred = defer_backlog(url, n)

    plain_rate, guarded_rate = n / plain_s, n / guarded_s
    ratio = guarded_rate / plain_rate
    print(f"messages: {n}, worker threads: {WORKER_THREADS}")
    print(
        f"plain Dramatiq:          {plain_rate:8.0f} msg/s  {plain_trips / n:.2f} round trips/msg"
    )
    print(f"with breaker middleware: {guarded_rate:8.0f} msg/s  {guarded_trips / n:.2f} trips/msg")
    verdict = "PASS" if ratio >= MIN_THROUGHPUT_RATIO else "FAIL"
    print(f"throughput ratio:        {ratio:8.2f}  (target >= {MIN_THROUGHPUT_RATIO}) {verdict}")
    print(
        f"deferring while OPEN:    {deferred / defer_s:8.0f} msg/s  "
        f"{defer_trips / n:.2f} round trips/deferral  "
        f"({defer_s / guarded_s:.2f}x the time to process the same backlog)"
    )
    print()
    print("| metric | value |")
    print("| --- | --- |")
    print(
        f"| plain Dramatiq, {n} no-op messages, {WORKER_THREADS} threads | {plain_rate:.0f} msg/s |"
    )
    print(f"| with CircuitBreakerMiddleware (CLOSED) | {guarded_rate:.0f} msg/s ({ratio:.2f}x) |")
    trips_row = f"{plain_trips / n:.2f} / {guarded_trips / n:.2f}"
    print(f"| round trips per message, plain / with middleware | {trips_row} |")
    defer_row = f"{deferred / defer_s:.0f} msg/s, {defer_s / guarded_s:.2f}x processing time"
    print(f"| deferring a {n}-message backlog while OPEN | {defer_row} |")
    print(f"| round trips per deferral | {defer_trips / n:.2f} |")


if __name__ == "__main__":
    main()
