"""What crash recovery costs: Redis commands of an idle worker process, and throughput with and
without the recovering broker.

``python -m bench.recovery_cost`` starts an embedded Redis and, in this process, a Worker on the
broker ``build_broker`` makes (8 threads): it counts every command Redis executes (scripts'
inner commands included, from ``INFO commandstats``) over ``--seconds`` of idleness, then again
while the worker holds ``--delayed`` delayed messages in memory (the ack-set checks grow with
them). Finally it drains ``--messages`` no-op messages through a plain ``RedisBroker`` and
through the recovering broker without the breaker middleware, to show the price of tracking
which fetched messages a process holds.
"""

from __future__ import annotations

import argparse
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

from bench._harness import WORKER_THREADS, flush, quiet_logs, run_until
from soulspot_jobs.broker import build_broker
from soulspot_jobs.broker.redis import RecoveringRedisBroker
from soulspot_jobs.embedded.server import EmbeddedRedis
from soulspot_jobs.settings import load_settings
from tests.redis_stats import command_calls

#: Alternating rounds of the throughput comparison.
ROUNDS = 3


def commands(client: redis.Redis) -> int:
    """Commands Redis executed since the last reset (EVALSHA and the commands scripts ran)."""
    return sum(command_calls(client).values())


def idle_cost(url: str, seconds: float, delayed: int, *, plain: bool = False) -> float:
    """Commands per second while a worker idles, holding ``delayed`` delayed messages, on
    ``build_broker``'s broker (or, ``plain``, on Dramatiq's own ``RedisBroker``)."""
    if plain:
        broker = RedisBroker(url=url, namespace="bench:dramatiq")
    else:
        broker = build_broker(load_settings(REDIS_URL=url))

    @dramatiq.actor(broker=broker)
    def noop() -> None:
        pass

    for _ in range(delayed):
        noop.send_with_options(delay=3_600_000)
    worker = dramatiq.Worker(broker, worker_threads=WORKER_THREADS)
    client = redis.Redis.from_url(url)
    try:
        fetched = f"{broker.namespace}:default.DQ"  # empty once the worker holds them all
        run_until(worker, lambda: broker.client.llen(fetched) == 0, 60.0)
        time.sleep(2.0)  # let the consumers settle into their idle polling
        client.config_resetstat()
        time.sleep(seconds)
        return (commands(client) - 1) / seconds  # minus the INFO itself
    finally:
        client.close()
        worker.stop()
        broker.close()


def drain(broker: dramatiq.Broker, messages: int) -> float:
    """Messages per second through ``broker`` with 8 worker threads and no-op actors."""

    @dramatiq.actor(broker=broker)
    def noop() -> None:
        pass

    for _ in range(messages):
        noop.send()
    worker = dramatiq.Worker(broker, worker_threads=WORKER_THREADS, worker_timeout=100)
    try:
        seconds = run_until(worker, lambda: broker.do_qsize("default") == 0, 120.0)
    finally:
        worker.stop()
        broker.close()
    return messages / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--delayed", type=int, default=8_000)
    parser.add_argument("--messages", type=int, default=5_000)
    args = parser.parse_args()
    quiet_logs()
    with EmbeddedRedis() as server:
        url = server.url
        flush(url)
        plain_idle = idle_cost(url, args.seconds, 0, plain=True)
        flush(url)
        idle = idle_cost(url, args.seconds, 0)
        flush(url)
        holding = idle_cost(url, args.seconds, args.delayed)
        rates: dict[str, float] = {}
        for _ in range(ROUNDS):  # alternating, best of each: the machine's noise is large
            for name, kind in (("plain", RedisBroker), ("recovering", RecoveringRedisBroker)):
                flush(url)
                broker = kind(url=url, namespace="bench:dramatiq")
                broker.add_middleware(AsyncIO())
                rates[name] = max(rates.get(name, 0.0), drain(broker, args.messages))
    print("| metric | value |")
    print("| --- | --- |")
    print(
        f"| Redis commands/s, idle worker process ({WORKER_THREADS} threads), plain Dramatiq / "
        f"recovering broker | {plain_idle:.1f} / {idle:.1f} |"
    )
    print(f"| same, recovering broker holding {args.delayed} delayed messages | {holding:.1f} |")
    ratio = rates["recovering"] / rates["plain"]
    print(
        f"| {args.messages} no-op messages, plain / recovering broker, best of {ROUNDS} | "
        f"{rates['plain']:.0f} / {rates['recovering']:.0f} msg/s ({ratio:.2f}x) |"
    )


if __name__ == "__main__":
    main()
