"""Deferred messages run the moment their breaker closes: a real Worker with Dramatiq's own
``worker_timeout``, a real RedisBroker, a real Redis, and a reset from another process."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.worker import WORKER_TIMEOUT as DRAMATIQ_WORKER_TIMEOUT

from soulspot_jobs.circuit_breaker import Breakers, CircuitBreaker, MemoryBackend, RedisBackend
from soulspot_jobs.deferral import Deferrals, MemoryDeferredIndex
from soulspot_jobs.deferral.options import DEFERRALS
from soulspot_jobs.middleware import DeferredRelease, middleware_stack
from soulspot_jobs.middleware.release import MAX_WORKER_TIMEOUT
from tests.middleware.conftest import DEADLINE, KEYS, QUEUE, Harness, LogWatch, Runs, config
from tests.polling import wait_until

SPAWN = multiprocessing.get_context("spawn")
#: Seconds the breakers are forced OPEN: far longer than any test waits.
OPEN_FOR = 30.0
#: Messages of the service whose breaker closes, and of one whose breaker stays OPEN.
SLSKD_JOBS, SPOTIFY_JOBS = 20, 5
#: The goal: the first deferred job runs at most this many seconds after its breaker closes.
RELEASE_GOAL = 1.0
#: ... and a message is deferred at most this many times on average across the outage.
MAX_DEFERRALS_PER_MESSAGE = 1.2


def _reset_in_another_process(redis_url: str, prefix: str, name: str, asked: Any) -> None:
    """Another process, with a backend of its own, resets ``name``; puts when it asked."""
    backend = RedisBackend.from_url(redis_url, prefix=prefix, local_view=False)
    try:
        breaker = CircuitBreaker(name, backend=backend)
        asked.put(time.time())
        breaker.reset_sync()
    finally:
        backend.close()


def reset(harness: Harness, breaker: CircuitBreaker, where: str) -> float:
    """Reset ``breaker`` from ``where``; returns the epoch seconds just before it closed."""
    if where == "this process":
        closed_at = time.time()
        breaker.reset_sync()
        return closed_at
    asked = SPAWN.Queue()
    process = SPAWN.Process(
        target=_reset_in_another_process,
        args=(harness.redis_url, KEYS.breakers, breaker.name, asked),
    )
    process.start()
    process.join(DEADLINE)
    assert process.exitcode == 0, "the resetting process failed"
    return float(asked.get(timeout=DEADLINE))


def release_of(broker: dramatiq.Broker) -> DeferredRelease:
    return next(m for m in broker.middleware if isinstance(m, DeferredRelease))


def held(broker: dramatiq.Broker) -> list[Any]:
    """The delayed messages (``_WorkQueueItem``) the worker holds in its delay queues."""
    items = []
    for consumer in release_of(broker).consumers():
        with consumer.delay_queue.mutex:
            items.extend(consumer.delay_queue.queue)
    return items


def start_worker(harness: Harness, broker: dramatiq.Broker) -> Worker:
    """A worker with Dramatiq's own ``worker_timeout``, as ``dramatiq`` starts one."""
    worker = Worker(broker, worker_threads=4)
    worker.start()
    harness._workers.append(worker)
    return worker


@pytest.mark.parametrize("where", ["another process", "this process"])
def test_deferred_messages_run_within_a_second_of_their_breaker_closing(
    harness: Harness, logs: LogWatch, where: str
) -> None:
    # Given slskd-api and spotify-api breakers forced OPEN for 30 s, and a message of each
    # service per job, all deferred for those 30 s and held in a worker's memory
    slskd = harness.breaker("slskd-api", config())
    spotify = harness.breaker("spotify-api", config())
    broker = harness.broker(slskd, spotify)
    runs = Runs(SLSKD_JOBS)
    spotify_ran = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api")
    def download(n: int) -> None:
        runs.record()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="spotify-api")
    def import_playlist(n: int) -> None:
        spotify_ran.set()

    slskd.force_open_sync(OPEN_FOR)
    spotify.force_open_sync(OPEN_FOR)
    sent = [download.send(n).message_id for n in range(SLSKD_JOBS)]
    for n in range(SPOTIFY_JOBS):
        import_playlist.send(n)
    worker = start_worker(harness, broker)
    assert worker.worker_timeout == min(DRAMATIQ_WORKER_TIMEOUT, MAX_WORKER_TIMEOUT)
    logs.wait_for("job.deferred", SLSKD_JOBS + SPOTIFY_JOBS)
    wait_until(lambda: len(held(broker)) == SLSKD_JOBS + SPOTIFY_JOBS, "the worker to hold them")
    assert runs.times == []

    # When slskd's breaker is reset to CLOSED
    closed_at = reset(harness, slskd, where)

    # Then the first slskd job starts within a second, and every one runs once
    runs.wait()
    first = min(runs.times) - closed_at
    assert first <= RELEASE_GOAL, f"the first deferred job started {first:.3f} s after the close"
    assert Counter(runs.ids) == Counter(sent)
    deferrals = sum(options[DEFERRALS] for options in runs.options.values())
    assert deferrals / SLSKD_JOBS <= MAX_DEFERRALS_PER_MESSAGE
    (released,) = logs.named("job.released")
    assert released["circuit_breaker"] == "slskd-api"
    assert released["released"] == SLSKD_JOBS

    # And the spotify jobs still wait, with their own etas, for a breaker that is still OPEN
    assert not spotify_ran.is_set()
    wait_until(lambda: broker.deferred.counts() == {"spotify-api": SPOTIFY_JOBS}, "the index")
    waiting = held(broker)
    assert len(waiting) == SPOTIFY_JOBS
    assert all(item.priority == item.message.options["eta"] for item in waiting)
    assert min(item.priority for item in waiting) >= (closed_at + OPEN_FOR - 5) * 1000


def test_a_worker_started_after_the_breaker_closed_runs_the_messages_deferred_before_at_once(
    harness: Harness, logs: LogWatch
) -> None:
    # Given slskd messages deferred for 30 s by a worker that has stopped since (they are back
    # in the delay queue in Redis), and slskd's breaker reset meanwhile
    slskd = harness.breaker("slskd-api", config())
    first_broker = harness.broker(slskd)
    runs = Runs(SLSKD_JOBS)

    def declare(broker: dramatiq.Broker) -> dramatiq.Actor:
        @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api")
        def download(n: int) -> None:
            runs.record()

        return download

    download = declare(first_broker)
    slskd.force_open_sync(OPEN_FOR)
    for n in range(SLSKD_JOBS):
        download.send(n)
    first = start_worker(harness, first_broker)
    logs.wait_for("job.deferred", SLSKD_JOBS)
    wait_until(lambda: len(held(first_broker)) == SLSKD_JOBS, "the worker to hold them")
    first.stop()
    harness._workers.remove(first)
    slskd.reset_sync()

    # When another worker starts
    second_broker = harness.broker(slskd)
    declare(second_broker)
    started = time.time()
    start_worker(harness, second_broker)

    # Then it runs them within a second, without waiting for their etas
    runs.wait()
    assert min(runs.times) - started <= RELEASE_GOAL
    assert max(runs.times) - started < OPEN_FOR / 2


def test_without_a_redis_backend_the_middleware_does_nothing() -> None:
    # Given the project's stack on the StubBroker with in-memory breakers
    stack = middleware_stack(Breakers(MemoryBackend()), Deferrals(MemoryDeferredIndex()))
    broker = StubBroker(stack)

    # When a worker starts on it, then no thread follows breakers and its timeout is its own
    worker = Worker(broker, worker_timeout=2_000, worker_threads=1)
    worker.start()
    try:
        assert worker.worker_timeout == 2_000
        assert not release_of(broker).enabled
        assert "soulspot-deferred-release" not in {t.name for t in threading.enumerate()}
    finally:
        worker.stop()
        broker.close()
