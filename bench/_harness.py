"""Shared pieces of the Dramatiq benchmarks: brokers on one Redis, round-trip counting, draining."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import dramatiq
import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

from soulspot_jobs.broker import build_broker
from soulspot_jobs.settings import Settings, load_settings

M = TypeVar("M", bound=dramatiq.Middleware)

#: Worker threads per worker, as in the design's measurements.
WORKER_THREADS = 8
QUEUE = "default"


def quiet_logs() -> None:
    """Keep per-message log lines out of the timings (deferral warnings would dominate)."""
    logging.getLogger("dramatiq").setLevel(logging.ERROR)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


def settings_for(url: str, **breaker_env: str) -> Settings:
    """Settings on ``url`` with breaker overrides given as CIRCUIT_BREAKER_* field names."""
    import os

    for name, value in breaker_env.items():
        os.environ[f"CIRCUIT_BREAKER_{name.upper()}"] = value
    return load_settings(REDIS_URL=url)


def plain_broker(url: str, settings: Settings) -> RedisBroker:
    """Dramatiq as it comes (default middleware + AsyncIO), in the same namespace layout."""
    broker = RedisBroker(url=url, namespace=f"{settings.key_prefix}:dramatiq")
    broker.add_middleware(AsyncIO())
    return broker


def guarded_broker(settings: Settings) -> Any:
    """``build_broker``'s broker: the project's whole stack."""
    return build_broker(settings)


def stack_middleware(broker: dramatiq.Broker, kind: type[M]) -> M:
    """The one middleware of ``kind`` in ``broker``'s stack."""
    (found,) = [m for m in broker.middleware if isinstance(m, kind)]
    return found


def flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()


class RoundTrips:
    """Counts client round trips (one per packed command sent: a pipeline is one)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    @contextmanager
    def counting(self) -> Iterator[RoundTrips]:
        original = redis.connection.AbstractConnection.send_packed_command

        def counted(conn: object, command: object, check_health: bool = True) -> None:
            with self._lock:
                self.count += 1
            original(conn, command, check_health)  # type: ignore[arg-type]

        redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
        try:
            yield self
        finally:
            redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


def run_until(worker: dramatiq.Worker, done: Callable[[], bool], timeout: float) -> float:
    """Start ``worker``, wait until ``done()`` holds (polled, bounded); the seconds it took."""
    start = time.perf_counter()
    worker.start()
    deadline = start + timeout
    while not done():
        if time.perf_counter() > deadline:
            raise TimeoutError("the benchmark did not finish in time")
        time.sleep(0.005)
    return time.perf_counter() - start
