"""The middleware on RabbitMQ: throughput of tagged no-op messages against plain Dramatiq on the
same RabbitMQ in the same run, and the cost of deferring a backlog while the breaker is OPEN.

Usage: ``python -m bench.rabbitmq_throughput [--messages N]``

A RabbitMQ node of the bench's own (``rabbitmq-server`` must be installed) carries the messages;
an embedded Redis holds the breakers and the deferred index. N messages run through a real Worker
(8 threads) on Dramatiq's plain RabbitmqBroker, then on ``build_broker`` with an ``amqp://`` URL
(breaker CLOSED), then N messages are deferred while the breaker is OPEN (RabbitMQ delayed
messages). Round trips are Redis round trips, counted client-side.
"""

from __future__ import annotations

import argparse

from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import AsyncIO

from bench._harness import WORKER_THREADS, flush, quiet_logs, settings_for
from bench.middleware_throughput import MIN_THROUGHPUT_RATIO, defer_backlog, drain
from soulspot_jobs.broker import build_broker
from soulspot_jobs.embedded.server import EmbeddedRedis
from tests.rabbitmq_server import EmbeddedRabbitMQ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3_000)
    n = parser.parse_args().messages
    quiet_logs()
    with EmbeddedRedis() as server, EmbeddedRabbitMQ() as rabbitmq:
        url = server.url
        plain = RabbitmqBroker(url=rabbitmq.url)
        plain.add_middleware(AsyncIO())
        plain_s, _ = drain(plain, n)
        plain.close()

        flush(url)
        settings = settings_for(url).model_copy(update={"broker_url": rabbitmq.url})
        guarded = build_broker(settings)
        guarded_s, guarded_trips = drain(guarded, n, service="slskd-api")
        guarded.close()

        defer_s, defer_trips, deferred = defer_backlog(url, n, broker_url=rabbitmq.url)

    plain_rate, guarded_rate = n / plain_s, n / guarded_s
    ratio = guarded_rate / plain_rate
    verdict = "PASS" if ratio >= MIN_THROUGHPUT_RATIO else "FAIL"
    print(f"messages: {n}, worker threads: {WORKER_THREADS}, RabbitMQ broker, breakers in Redis")
    print(f"plain Dramatiq:          {plain_rate:8.0f} msg/s")
    print(
        f"with breaker middleware: {guarded_rate:8.0f} msg/s  "
        f"{guarded_trips / n:.2f} Redis round trips/msg"
    )
    print(f"throughput ratio:        {ratio:8.2f}  (target >= {MIN_THROUGHPUT_RATIO}) {verdict}")
    print(
        f"deferring while OPEN:    {deferred / defer_s:8.0f} msg/s  "
        f"{defer_trips / n:.2f} Redis round trips/deferral  "
        f"({defer_s / guarded_s:.2f}x the time to process the same backlog)"
    )
    print()
    print("| metric (RabbitMQ broker) | value |")
    print("| --- | --- |")
    plain_row = f"plain Dramatiq, {n} no-op messages, {WORKER_THREADS} threads"
    print(f"| {plain_row} | {plain_rate:.0f} msg/s |")
    print(f"| with CircuitBreakerMiddleware (CLOSED) | {guarded_rate:.0f} msg/s ({ratio:.2f}x) |")
    print(f"| Redis round trips per message with the middleware | {guarded_trips / n:.2f} |")
    defer_row = f"{deferred / defer_s:.0f} msg/s, {defer_s / guarded_s:.2f}x processing time"
    print(f"| deferring a {n}-message backlog while OPEN | {defer_row} |")
    print(f"| Redis round trips per deferral | {defer_trips / n:.2f} |")


if __name__ == "__main__":
    main()
