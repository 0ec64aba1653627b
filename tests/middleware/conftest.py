"""What the middleware tests share: a harness of brokers and workers on one breaker backend, a
structlog watch, and small helpers. Every wait is an event or a deadline-bound poll.

Timing: the Redis broker starts a delayed message 1.5-2.5 s after its eta (an idle delay-queue
consumer backs off for up to 1 s), so breakers are held OPEN for well under a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
import structlog
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from soulspot_jobs.broker import build_broker
from soulspot_jobs.circuit_breaker import CircuitBreaker, CircuitBreakerConfig, RedisBackend
from soulspot_jobs.keys import Keys
from soulspot_jobs.settings import load_settings

#: The key names build_broker uses with the default key prefix.
KEYS = Keys()
#: Queue of every test actor.
QUEUE = "jobs"
#: Dead-letter queue (sorted set) and its messages (hash) of QUEUE.
DEAD_LETTERS = f"{KEYS.dramatiq}:{QUEUE}.XQ"
DEAD_LETTER_MESSAGES = f"{DEAD_LETTERS}.msgs"
#: Seconds between refreshes of the breakers' local views (short, so views follow quickly).
REFRESH_INTERVAL = 0.05
#: Milliseconds a worker waits on an empty queue before polling again.
WORKER_TIMEOUT = 50
#: Seconds a breaker is forced OPEN in these tests.
HOLD_OPEN = 0.5
#: Seconds any single wait may take before the test fails instead of hanging.
DEADLINE = 20.0


# -- helpers -----------------------------------------------------------------------------------


class LogWatch(structlog.testing.LogCapture):
    """Captures structlog events like ``capture_logs`` and lets a test wait for one."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = threading.Condition()

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        with self._changed:
            try:
                return super().__call__(logger, method_name, event_dict)
            finally:
                self._changed.notify_all()

    def named(self, event_name: str) -> list[dict[str, Any]]:
        """Captured events with this ``event_name``, oldest first."""
        with self._changed:
            return [e for e in self.entries if e.get("event_name") == event_name]

    def wait_for(self, event_name: str, count: int = 1, timeout: float = DEADLINE) -> list[dict]:
        """Block until ``count`` events named ``event_name`` were logged; return them."""
        with self._changed:
            arrived = self._changed.wait_for(
                lambda: (
                    len([e for e in self.entries if e.get("event_name") == event_name]) >= count
                ),
                timeout,
            )
        found = self.named(event_name)
        assert arrived, f"{len(found)} of {count} {event_name!r} events within {timeout} s"
        return found


class WorkerThreadRecords(logging.Handler):
    """Collects the records the worker threads' logger lets through (after its filters)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def force_open(breaker: CircuitBreaker, seconds: float) -> None:
    """Open ``breaker`` now and keep it OPEN for ``seconds``."""
    breaker.record_failure_sync(breaker.acquire_sync(), hold_open=seconds)


def config(**fields: Any) -> CircuitBreakerConfig:
    """A breaker config with a short HALF_OPEN retry, so refused trials come back soon."""
    return CircuitBreakerConfig(**{"half_open_retry_after": 0.2, **fields})


class Harness:
    """Brokers and workers of one test, on one breaker backend; everything closed afterwards."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.settings = load_settings(REDIS_URL=redis_url)
        self.backend = RedisBackend(
            redis.Redis.from_url(redis_url, client_name="soulspot-breakers"),
            prefix=KEYS.breakers,
            refresh_interval=REFRESH_INTERVAL,
        )
        self._brokers: list[RedisBroker] = []
        self._workers: list[Worker] = []

    def broker(self, *breakers: CircuitBreaker, **options: Any) -> Any:
        """A broker from ``build_broker`` plus CurrentMessage, with ``breakers`` by name."""
        broker = build_broker(
            self.settings,
            backend=self.backend,
            breakers={b.name: b for b in breakers},
            **options,
        )
        broker.add_middleware(CurrentMessage())
        self._brokers.append(broker)
        return broker

    def breaker(self, name: str, breaker_config: CircuitBreakerConfig, **options: Any):
        """A breaker on this harness's backend."""
        return CircuitBreaker(name, breaker_config, backend=self.backend, **options)

    def start_worker(self, broker: RedisBroker, threads: int = 8) -> Worker:
        worker = Worker(broker, worker_timeout=WORKER_TIMEOUT, worker_threads=threads)
        worker.start()
        self._workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        for broker in self._brokers:
            broker.close()
        self.backend.close()
        self.backend.client.close()


@pytest.fixture
def harness(redis_url: str) -> Iterator[Harness]:
    built = Harness(redis_url)
    yield built
    built.close()


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    """Every structlog event of the test, whatever logging configuration ran before it."""
    saved = structlog.get_config()
    watch = LogWatch()
    structlog.reset_defaults()
    structlog.configure(processors=[watch])
    yield watch
    structlog.configure(**saved)


def drain(broker: RedisBroker, worker: Worker) -> None:
    """Wait until QUEUE and its delay queue are empty and every worker thread is idle."""
    broker.join(QUEUE, timeout=int(DEADLINE * 1000))
    worker.join()


def dead_lettered(client: redis.Redis) -> list[dramatiq.Message]:
    """The messages in QUEUE's dead-letter queue."""
    return [dramatiq.Message.decode(raw) for raw in client.hvals(DEAD_LETTER_MESSAGES)]


class Runs:
    """What the actors of a test ran: message ids, options and times; set when ``expected`` ran."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.lock = threading.Lock()
        self.ids: list[str] = []
        self.options: dict[str, dict[str, Any]] = {}
        self.times: list[float] = []
        self.all_ran = threading.Event()

    def record(self) -> None:
        message = CurrentMessage.get_current_message()
        with self.lock:
            if message is not None:
                self.ids.append(message.message_id)
                self.options[message.message_id] = dict(message.options)
            self.times.append(time.time())
            if len(self.times) >= self.expected:
                self.all_ran.set()

    def wait(self, timeout: float = DEADLINE) -> None:
        assert self.all_ran.wait(timeout), f"{len(self.times)} of {self.expected} runs in time"


