"""The recovering broker and its middleware with a real Worker on a real redis-server: messages a
dead process fetched, messages a live one lost on a Redis restart, and messages whose follow-up
Redis could not take, all run (again) instead of being stranded or dead-lettered."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
import structlog
from dramatiq.brokers.redis import RedisBroker

from soulspot_jobs.broker import build_broker
from soulspot_jobs.broker.redis import RecoveringRedisBroker
from soulspot_jobs.deferral.dead_letters import DeadLetters
from soulspot_jobs.embedded.server import EmbeddedRedis
from soulspot_jobs.middleware.breakers import CircuitBreakerMiddleware
from soulspot_jobs.middleware.recovery import Recovery
from soulspot_jobs.settings import Settings, load_settings
from tests.polling import wait_until

#: Seconds of silence after which a process counts as dead in these tests.
HEARTBEAT_TIMEOUT = 1.0
#: Seconds between two looks of the recovery thread in these tests.
INTERVAL = 0.1


def _settings(redis_url: str) -> Settings:
    return load_settings(
        REDIS_URL=redis_url,
        recovery={"heartbeat_timeout": HEARTBEAT_TIMEOUT, "interval": INTERVAL},
    )


class Runs:
    """Which messages an actor ran, how often, across threads."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.counts[n] += 1


def _declare(broker: RecoveringRedisBroker, runs: Runs) -> dramatiq.Actor:
    @dramatiq.actor(broker=broker, actor_name="note", max_retries=0)
    def note(n: int) -> None:
        runs.add(n)

    return note


@pytest.fixture
def worker_for() -> Iterator[object]:
    """Start a real Worker on a broker; every one started is stopped and closed afterwards."""
    started: list[tuple[dramatiq.Worker, RecoveringRedisBroker]] = []

    def start(broker: RecoveringRedisBroker) -> dramatiq.Worker:
        worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
        worker.start()
        started.append((worker, broker))
        return worker

    yield start
    for worker, broker in started:
        worker.stop()
        broker.close()


def test_messages_a_dead_process_fetched_run_once_on_a_live_worker_after_the_timeout(
    redis_url: str, worker_for: object
) -> None:
    # Given a process that fetched five messages into its ack set, then died
    settings = _settings(redis_url)
    dead, live, runs = build_broker(settings), build_broker(settings), Runs()
    note = _declare(dead, Runs())
    _declare(live, runs)
    for n in range(5):
        note.send(n)
    consumer = dead.consume("default", prefetch=5)
    fetched = [next(consumer) for _ in range(5)]
    assert all(message is not None for message in fetched)
    died_at = time.monotonic()

    # When a worker runs on another process's broker
    worker_for(live)

    # Then it runs each of them once, as soon as the dead one's heartbeat is old enough
    wait_until(lambda: len(runs.counts) == 5, "the dead process's messages", 10.0)
    took = time.monotonic() - died_at
    assert set(runs.counts.values()) == {1}
    assert HEARTBEAT_TIMEOUT <= took < HEARTBEAT_TIMEOUT + 3.0, took
    dead.close()


def test_delayed_messages_a_live_worker_lost_on_a_redis_restart_run_once(
    tmp_path: Path, worker_for: object
) -> None:
    # Given a worker holding delayed messages, on a Redis with an append-only file
    server = EmbeddedRedis(appendonly=True, data_dir=tmp_path / "redis").start()
    try:
        port, runs = server.port, Runs()
        broker = build_broker(_settings(server.url))
        note = _declare(broker, runs)
        worker = worker_for(broker)
        for n in range(10):
            note.send_with_options(args=(n,), delay=3000)
        wait_until(lambda: broker.held_count() == 10, "the worker to hold the messages", 5.0)

        # When Redis restarts, so that the worker's consumers reconnect and drop what they held
        server.stop()
        time.sleep(1.0)  # the outage itself
        with structlog.testing.capture_logs() as logs:
            server = EmbeddedRedis(port=port, appendonly=True, data_dir=tmp_path / "redis")
            server.start()

            # Then every message runs exactly once, the worker untouched
            wait_until(lambda: len(runs.counts) == 10, "the delayed messages", 15.0)
            worker.join()  # the last acknowledgements are in before anything stops
        assert set(runs.counts.values()) == {1}
        assert any(e.get("event_name") == "recovery.strays" for e in logs), logs
    finally:
        worker.stop()  # before its Redis goes: a worker cannot acknowledge without it
        server.stop()


def test_a_redis_that_lost_its_data_is_reported_in_the_worker_log(
    redis_url: str, worker_for: object
) -> None:
    # Given a worker that has looked at its Redis
    broker = build_broker(_settings(redis_url))
    _declare(broker, Runs())
    marker = "soulspot:recovery:alive"
    with structlog.testing.capture_logs() as logs:
        worker_for(broker)
        recovery = next(m for m in broker.middleware if isinstance(m, Recovery))
        wait_until(lambda: recovery.has_looked, "the first look", 5.0)
        assert broker.client.exists(marker)

        # When Redis loses everything (as a restart without persistence does)
        broker.client.flushall()

        # Then the worker says so, at ERROR
        wait_until(
            lambda: any(e.get("event_name") == "recovery.redis_data_lost" for e in logs),
            "the data-loss report",
            5.0,
        )
    [report] = [e for e in logs if e.get("event_name") == "recovery.redis_data_lost"]
    assert report["log_level"] == "error"
    assert "appendonly" in report["event"]


def test_a_stopped_worker_gives_back_what_it_prefetched_at_once(redis_url: str) -> None:
    # Given a worker whose two threads are busy and which holds two more messages (its prefetch)
    broker, runs, release = build_broker(_settings(redis_url)), Runs(), threading.Event()

    @dramatiq.actor(broker=broker, actor_name="slow", max_retries=0)
    def slow(n: int) -> None:
        release.wait(10)
        runs.add(n)

    for n in range(6):
        slow.send(n)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    stopped = False
    try:
        wait_until(lambda: broker.held_count() == 4, "the prefetch", 5.0)

        # When it is stopped gracefully, its threads finishing their messages
        release.set()
        worker.stop()
        stopped = True

        # Then nothing is left in its ack sets: what it did not process is queued again
        acks = broker.client.keys(f"{broker.namespace}:__acks__.{broker.broker_id}.*")
        assert sum(broker.client.scard(key) for key in acks) == 0
        assert broker.client.llen(f"{broker.namespace}:default") == 6 - sum(runs.counts.values())
    finally:
        release.set()
        if not stopped:
            worker.stop()
        broker.close()


# -- a follow-up Redis could not take ---------------------------------------------------------


def _refuse_first_delayed_enqueue(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make the first delayed enqueue fail as it does while Redis is away; set when it did."""
    refused, original = threading.Event(), RedisBroker.enqueue

    def enqueue(self: RedisBroker, message: dramatiq.Message, *, delay: int | None = None) -> Any:
        if delay and not refused.is_set():
            refused.set()
            raise redis.ConnectionError("Connection refused (injected: Redis is away)")
        return original(self, message, delay=delay)

    monkeypatch.setattr(RedisBroker, "enqueue", enqueue)
    return refused


def _dead_letters(broker: RecoveringRedisBroker) -> int:
    return DeadLetters(broker).counts().get("default", 0)


def test_a_deferral_redis_could_not_take_runs_again_instead_of_being_dead_lettered(
    redis_url: str, worker_for: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a tagged message whose service's breaker is OPEN for a moment
    broker, runs = build_broker(_settings(redis_url)), Runs()

    @dramatiq.actor(broker=broker, actor_name="fetch", service="slskd-api", max_retries=0)
    def fetch(n: int) -> None:
        runs.add(n)

    middleware = next(m for m in broker.middleware if isinstance(m, CircuitBreakerMiddleware))
    breaker = middleware.breaker("slskd-api")
    breaker.record_failure_sync(breaker.acquire_sync(), hold_open=1.0)
    fetch.send(1)

    # When Redis is away just as the worker enqueues the message's deferred copy
    refused = _refuse_first_delayed_enqueue(monkeypatch)
    worker_for(broker)

    # Then the message is kept and runs once Redis and the service are back, never dead-lettered
    wait_until(lambda: runs.counts[1] == 1, "the refused message to run", 10.0)
    assert refused.is_set()
    assert _dead_letters(broker) == 0


def test_a_message_failed_because_its_send_was_refused_runs_again_instead_of_being_dead_lettered(
    redis_url: str, worker_for: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an actor with no retries left that sends a follow-up message
    broker, relays, notes = build_broker(_settings(redis_url)), Runs(), Runs()
    note = _declare(broker, notes)

    @dramatiq.actor(broker=broker, actor_name="relay", max_retries=0)
    def relay(n: int) -> None:
        relays.add(n)
        note.send_with_options(args=(n,), delay=10)

    relay.send(1)

    # When Redis is away as it sends, so that it fails for good
    refused = _refuse_first_delayed_enqueue(monkeypatch)
    worker_for(broker)

    # Then it runs again once Redis is back, and its follow-up is sent, instead of a dead letter
    wait_until(lambda: notes.counts[1] == 1, "the follow-up to run", 10.0)
    assert refused.is_set()
    assert relays.counts[1] == 2
    assert _dead_letters(broker) == 0
