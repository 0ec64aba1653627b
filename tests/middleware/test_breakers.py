"""The circuit-breaker middleware and the project's Retries on a real Worker, a real RedisBroker
and a real Redis: deferrals, HALF_OPEN trials, what counts as a failure, the deferral budget.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
import traceback
from collections import Counter
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend as ResultsRedisBackend

from soulspot_jobs.broker import build_broker
from soulspot_jobs.circuit_breaker import (
    CircuitBreaker,
    CircuitState,
    RedisBackend,
)
from soulspot_jobs.deferral.dead_letters import DeadLetters
from soulspot_jobs.deferral.index import RedisDeferredIndex
from soulspot_jobs.deferral.options import DEFERRALS, DEFERRED_BY, FIRST_DEFERRED_AT
from soulspot_jobs.embedded.server import EmbeddedRedis
from soulspot_jobs.errors import RetryLater, ServiceUnavailableError, is_service_failure
from soulspot_jobs.settings import load_settings
from tests.middleware.conftest import (
    DEAD_LETTERS,
    DEADLINE,
    HOLD_OPEN,
    KEYS,
    QUEUE,
    REFRESH_INTERVAL,
    WORKER_TIMEOUT,
    Harness,
    LogWatch,
    Runs,
    WorkerThreadRecords,
    config,
    dead_lettered,
    drain,
    force_open,
)
from tests.polling import wait_until
from tests.redis_stats import command_calls
from tests.servers import RedisKind

# -- deferral while OPEN -----------------------------------------------------------------------


def test_messages_refused_by_an_open_breaker_are_deferred_then_run_exactly_once(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis
) -> None:
    """100 messages meet an OPEN breaker: all deferred (none run, none failed), all run later."""
    # Given an slskd-api breaker held OPEN for 1 s and 100 messages of a tagged actor
    total, hold = 100, 1.0
    slskd = harness.breaker("slskd-api", config(timeout=1.0, success_threshold=1))
    broker = harness.broker(slskd)
    runs = Runs(total)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api", max_retries=3)
    def download(n: int) -> None:
        runs.record()

    open_until = time.time() + hold  # taken before: the breaker's own deadline is later
    force_open(slskd, hold)
    sent = [download.send(n).message_id for n in range(total)]

    # When a worker takes them
    worker = harness.start_worker(broker)

    # Then every one is deferred and listed in the index, while none has run or failed
    logs.wait_for("job.deferred", total)
    assert runs.times == []
    assert broker.deferred.counts() == {"slskd-api": total}
    assert {job.message_id for job in broker.deferred.jobs("slskd-api")} == set(sent)
    assert redis_client.zcard(DEAD_LETTERS) == 0

    # And after the breaker's timeout each runs exactly once, with no retry consumed
    runs.wait()
    drain(broker, worker)
    assert Counter(runs.ids) == Counter(sent)
    assert min(runs.times) >= open_until
    for options in runs.options.values():
        assert options.get("retries", 0) == 0
        assert options[DEFERRALS] >= 1
        assert options[DEFERRED_BY] == "slskd-api"
    assert broker.deferred.counts() == {}
    assert redis_client.zcard(DEAD_LETTERS) == 0
    assert slskd.stats.total_failures == 1  # only the one that forced it open


def test_an_async_actor_is_deferred_while_open_and_runs_later(
    harness: Harness, logs: LogWatch
) -> None:
    # Given an OPEN slskd-api breaker and an async tagged actor
    slskd = harness.breaker("slskd-api", config(timeout=HOLD_OPEN, success_threshold=1))
    broker = harness.broker(slskd)
    ran = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api")
    async def search(query: str) -> None:
        await asyncio.sleep(0)
        ran.set()

    force_open(slskd, HOLD_OPEN)
    message = search.send("nirvana")

    # When a worker takes it
    worker = harness.start_worker(broker)

    # Then it is deferred without running, and runs once the breaker lets it
    (deferred,) = logs.wait_for("job.deferred")
    assert deferred["message_id"] == message.message_id
    assert not ran.is_set()
    assert ran.wait(DEADLINE)
    drain(broker, worker)
    assert broker.deferred.counts() == {}


def test_a_breaker_error_raised_inside_an_async_actor_defers_it(
    harness: Harness, logs: LogWatch
) -> None:
    # Given an async musicbrainz-api actor awaiting spotify-api, whose breaker is OPEN
    musicbrainz = harness.breaker("musicbrainz-api", config(failure_threshold=1))
    spotify = harness.breaker("spotify-api", config(timeout=HOLD_OPEN, success_threshold=1))
    broker = harness.broker(musicbrainz, spotify)
    ran = threading.Event()

    async def fetch() -> None:
        ran.set()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="musicbrainz-api")
    async def enrich(isrc: str) -> None:
        await spotify.call(fetch)

    force_open(spotify, HOLD_OPEN)
    message = enrich.send("USRC17607839")

    # When a worker runs it
    worker = harness.start_worker(broker)

    # Then it is deferred by spotify-api, runs later, and musicbrainz-api counted no failure
    (deferred,) = logs.wait_for("job.deferred")
    assert (deferred["message_id"], deferred["service"]) == (message.message_id, "spotify-api")
    assert ran.wait(DEADLINE)
    drain(broker, worker)
    assert musicbrainz.stats.total_failures == 0
    assert broker.deferred.counts() == {}


def test_a_deferred_message_that_expires_on_its_way_back_leaves_the_index(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis
) -> None:
    """The index holds exactly the messages deferred and not yet run or dead-lettered.

    AgeLimit runs before the breaker and keeps counting across deferrals (the copy keeps its
    message_timestamp), so a deferred message may expire before it comes back; AgeLimit then
    dead-letters it without the breaker's ``before_process_message`` running.
    """
    # Given an actor whose messages expire after 300 ms, and a breaker OPEN for longer
    slskd = harness.breaker("slskd-api", config(timeout=HOLD_OPEN, success_threshold=1))
    broker = harness.broker(slskd)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api", max_age=300)
    def download(n: int) -> None:
        raise AssertionError("an expired message must not run")

    force_open(slskd, HOLD_OPEN)
    message = download.send(1)

    # When it is deferred, and expires before the breaker lets it through
    worker = harness.start_worker(broker)
    logs.wait_for("job.deferred")
    wait_until(lambda: redis_client.zcard(DEAD_LETTERS) == 1, "AgeLimit to dead-letter it")
    drain(broker, worker)

    # Then it is dead-lettered, and no longer listed as waiting for the breaker
    assert [m.message_id for m in dead_lettered(redis_client)] == [message.message_id]
    assert broker.deferred.counts() == {}


# -- HALF_OPEN across worker processes ---------------------------------------------------------

SPAWN = multiprocessing.get_context("spawn")
#: Redis keys the trial actor uses to report to the test and to wait for its release.
IN_FLIGHT, STARTS, RELEASE, DONE = "test:in_flight", "test:starts", "test:release", "test:done"
#: Messages sent in the half-open test, and worker threads per process.
HALF_OPEN_MESSAGES = 6
THREADS_PER_PROCESS = 4


def _declare_trial(broker: RedisBroker) -> dramatiq.Actor:
    """The tagged actor of the half-open test: counts itself in flight, waits for release."""

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api", actor_name="trial")
    def trial(redis_url: str, n: int) -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            client.rpush(STARTS, client.incr(IN_FLIGHT))
            released = client.blpop([RELEASE], timeout=DEADLINE)
            client.decr(IN_FLIGHT)
            if released is None:
                raise RuntimeError("the test never released the trial")
            client.rpush(DONE, n)
        finally:
            client.close()

    return trial


def _worker_process(redis_url: str, config_fields: dict, ready: Any, stop: Any, errors: Any):
    """One worker process: its own backend, build_broker broker and Worker, until ``stop``."""
    try:
        backend = RedisBackend.from_url(
            redis_url, prefix=KEYS.breakers, refresh_interval=REFRESH_INTERVAL
        )
        breaker = CircuitBreaker("slskd-api", config(**config_fields), backend=backend)
        broker = build_broker(
            load_settings(REDIS_URL=redis_url), backend=backend, breakers={"slskd-api": breaker}
        )
        _declare_trial(broker)
        worker = Worker(broker, worker_timeout=WORKER_TIMEOUT, worker_threads=THREADS_PER_PROCESS)
        worker.start()
        try:
            ready.release()
            stop.wait(60)
        finally:
            worker.stop()
            broker.close()
            backend.close()
    except BaseException:
        errors.put(traceback.format_exc())
        ready.release()


@pytest.mark.parametrize("max_calls", [1, 2])
def test_two_worker_processes_run_no_more_half_open_trials_than_allowed(
    harness: Harness, redis_url: str, redis_client: redis.Redis, max_calls: int
) -> None:
    # Given two worker processes sharing an slskd-api breaker allowing max_calls trials
    config_fields = {"timeout": HOLD_OPEN, "half_open_max_calls": max_calls, "success_threshold": 1}
    ready, stop, errors = SPAWN.Semaphore(0), SPAWN.Event(), SPAWN.Queue()
    processes = [
        SPAWN.Process(
            target=_worker_process,
            args=(redis_url, config_fields, ready, stop, errors),
            daemon=True,
        )
        for _ in range(2)
    ]
    slskd = harness.breaker("slskd-api", config(**config_fields))
    broker = harness.broker(slskd)
    trial = _declare_trial(broker)
    try:
        for process in processes:
            process.start()
        for _ in processes:
            assert ready.acquire(timeout=DEADLINE), "a worker process did not start in time"
        assert errors.empty(), errors.get()

        # When the breaker opens, messages arrive, and its timeout passes while trials block
        force_open(slskd, HOLD_OPEN)
        for n in range(HALF_OPEN_MESSAGES):
            trial.send(redis_url, n)
        wait_until(lambda: redis_client.llen(STARTS) >= max_calls, "the first trials")

        def others_refused_in_half_open() -> bool:
            jobs = broker.deferred.jobs("slskd-api")
            return len(jobs) == HALF_OPEN_MESSAGES - max_calls and all(
                job.deferrals >= 2 for job in jobs
            )

        wait_until(others_refused_in_half_open, "the other messages to be refused in HALF_OPEN")

        # Then exactly max_calls trials ran at once, the rest were deferred again
        starts = [int(n) for n in redis_client.lrange(STARTS, 0, -1)]
        assert len(starts) == max_calls
        assert max(starts) == max_calls
        assert slskd.stats.state is CircuitState.HALF_OPEN

        # And once the trials succeed every message runs exactly once
        redis_client.rpush(RELEASE, *["go"] * HALF_OPEN_MESSAGES)
        wait_until(lambda: redis_client.llen(DONE) == HALF_OPEN_MESSAGES, "every message to run")
        done = Counter(int(n) for n in redis_client.lrange(DONE, 0, -1))
        assert done == Counter(range(HALF_OPEN_MESSAGES))
        assert redis_client.zcard(DEAD_LETTERS) == 0
        assert errors.empty(), errors.get()
    finally:
        stop.set()
        for process in processes:
            process.join(DEADLINE)
            if process.is_alive():
                process.terminate()
                process.join(DEADLINE)
        errors.close()
        errors.join_thread()


# -- what is and is not a failure --------------------------------------------------------------


def test_a_breaker_error_raised_inside_an_actor_defers_it_by_that_services_breaker(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis
) -> None:
    # Given a musicbrainz-api actor calling spotify-api, whose breaker is OPEN
    musicbrainz = harness.breaker("musicbrainz-api", config(failure_threshold=1))
    spotify = harness.breaker("spotify-api", config(timeout=HOLD_OPEN, success_threshold=1))
    broker = harness.broker(musicbrainz, spotify)
    runs = Runs(1)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="musicbrainz-api", max_retries=3)
    def enrich(isrc: str) -> None:
        spotify.call_sync(runs.record)

    force_open(spotify, HOLD_OPEN)
    message = enrich.send("USRC17607839")

    # When a worker runs it
    worker = harness.start_worker(broker)

    # Then it is deferred by spotify-api's retry_after and listed under spotify-api
    (deferred,) = logs.wait_for("job.deferred")
    assert deferred["message_id"] == message.message_id
    assert deferred["service"] == "spotify-api"
    assert 0 < deferred["retry_after"] <= HOLD_OPEN
    assert deferred["delay"] >= deferred["retry_after"]
    assert broker.deferred.counts() == {"spotify-api": 1}

    # And it runs later with no retry consumed, and musicbrainz-api counted no failure
    runs.wait()
    drain(broker, worker)
    options = runs.options[message.message_id]
    assert options.get("retries", 0) == 0
    assert options[DEFERRALS] == 1
    assert options[DEFERRED_BY] == "spotify-api"
    stats = musicbrainz.stats
    assert stats.total_failures == 0
    assert stats.state is CircuitState.CLOSED
    assert broker.deferred.counts() == {}
    assert redis_client.zcard(DEAD_LETTERS) == 0


def test_an_excluded_exception_fails_the_message_without_tripping_or_deferring(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis
) -> None:
    # Given a breaker that opens at the first failure but excludes ValueError
    slskd = harness.breaker("slskd-api", config(failure_threshold=1), exclude=(ValueError,))
    broker = harness.broker(slskd)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api", max_retries=0)
    def download(n: int) -> None:
        raise ValueError("not a service failure")

    # When the actor raises ValueError
    message = download.send(1)
    worker = harness.start_worker(broker)
    drain(broker, worker)

    # Then the message failed normally and the breaker neither opened nor deferred anything
    assert [m.message_id for m in dead_lettered(redis_client)] == [message.message_id]
    stats = slskd.stats
    assert stats.state is CircuitState.CLOSED
    assert stats.total_failures == 0
    assert logs.named("job.deferred") == []
    assert broker.deferred.counts() == {}


def test_a_time_limit_exceeded_counts_as_a_failure_and_opens_the_breaker(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis
) -> None:
    # Given a breaker that opens at the first failure and an actor that outlives its time limit
    slskd = harness.breaker("slskd-api", config(failure_threshold=1, timeout=60.0))
    broker = harness.broker(slskd)

    @dramatiq.actor(
        broker=broker, queue_name=QUEUE, service="slskd-api", time_limit=50, max_retries=1
    )
    def hang() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # short sleeps, so the interrupt lands promptly
            time.sleep(0.01)

    # When it runs and the time limit interrupts it (TimeLimit starts its watchdog thread on
    # process boot, which the dramatiq CLI announces in each worker process; a bare Worker
    # does not, so the test announces it; the daemon watchdog idles once no deadline is set)
    broker.emit_after("process_boot")
    message = hang.send()
    harness.start_worker(broker)

    # Then the breaker counts the failure and opens
    (opened,) = logs.wait_for("circuit_breaker.opened")
    assert opened["circuit_breaker"] == "slskd-api"
    stats = slskd.stats
    assert stats.state is CircuitState.OPEN
    assert stats.total_failures == 1

    # And the message, whose failure opened the breaker, spent one retry (it ran and failed),
    # and its retry waits out the timeout: listed as deferred for about 60 s, not dead-lettered
    (deferred,) = logs.wait_for("job.deferred")
    assert deferred["message_id"] == message.message_id
    assert deferred["state"] == "open"
    assert deferred["retry_after"] >= 59
    assert deferred["delay"] >= 59
    assert broker.deferred.counts() == {"slskd-api": 1}
    assert redis_client.zcard(DEAD_LETTERS) == 0


def test_slow_successful_messages_open_a_breaker_that_times_calls(
    harness: Harness, logs: LogWatch
) -> None:
    # Given a breaker judging a window of 4 calls, slow from 50 ms, open at a 50 % slow rate,
    # and an actor that succeeds in 100 ms
    slskd = harness.breaker(
        "slskd-api",
        config(
            sliding_window_type="count",
            sliding_window_size=4,
            minimum_calls=4,
            slow_call_duration=0.05,
            slow_call_rate_threshold=50.0,
            timeout=60.0,
        ),
    )
    broker = harness.broker(slskd)
    runs = Runs(4)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api")
    def download(n: int) -> None:
        time.sleep(0.1)
        runs.record()

    # When a worker runs 4 messages of it, one at a time
    for n in range(4):
        download.send(n)
    harness.start_worker(broker, threads=1)
    runs.wait()

    # Then each message was timed: 4 slow successes opened the breaker
    (opened,) = logs.wait_for("circuit_breaker.opened")
    assert opened["circuit_breaker"] == "slskd-api"
    assert slskd.stats.state is CircuitState.OPEN


def test_a_message_past_its_deferral_budget_is_dead_lettered_with_a_reason(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis
) -> None:
    # Given an actor with a 1 ms deferral budget, and an OPEN breaker
    slskd = harness.breaker("slskd-api", config(timeout=60.0))
    broker = harness.broker(slskd)
    runs = Runs(1)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api", max_deferral=1)
    def download(n: int) -> None:
        runs.record()

    force_open(slskd, HOLD_OPEN)
    message = download.send(1)
    worker = harness.start_worker(broker)
    logs.wait_for("job.deferred")
    # ... and kept OPEN by an operator before the deferred copy comes back, so it is refused
    # again (taking the HALF_OPEN trial slot for this raced the deferred copy for it)
    slskd.force_open_sync(30.0)

    # When the message comes back, past its budget
    (dead,) = logs.wait_for("job.dead_lettered")
    drain(broker, worker)

    # Then it is in the dead-letter queue, never run, its reason kept beside it and logged as an
    # ERROR
    (lettered,) = dead_lettered(redis_client)
    assert lettered.message_id == message.message_id
    reason = broker.dead_letter_reasons.get(message.message_id)
    assert "past the budget" in reason
    assert dead["log_level"] == "error"
    assert dead["message_id"] == message.message_id
    assert dead["reason"] == reason
    assert lettered.options.get("retries", 0) == 0
    assert runs.times == []
    assert broker.deferred.counts() == {}


def test_a_requeued_dead_letter_runs_with_a_fresh_budget(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis
) -> None:
    # Given a message dead-lettered past its deferral budget while the breaker was OPEN
    slskd = harness.breaker("slskd-api", config(timeout=60.0, success_threshold=1))
    broker = harness.broker(slskd)
    runs = Runs(1)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api", max_deferral=60_000)
    def download(n: int) -> None:
        runs.record()

    force_open(slskd, 30.0)
    long_ago = int((time.time() - 120) * 1000)
    message = download.send_with_options(
        args=(1,), **{FIRST_DEFERRED_AT: long_ago, DEFERRALS: 3, DEFERRED_BY: "slskd-api"}
    )
    worker = harness.start_worker(broker)
    logs.wait_for("job.dead_lettered")
    wait_until(lambda: redis_client.zcard(DEAD_LETTERS) == 1, "the message to be dead-lettered")

    # When it is requeued while the breaker is still OPEN for a moment
    slskd.force_open_sync(HOLD_OPEN)
    DeadLetters(broker).requeue(message.message_id)

    # Then it is deferred again (a fresh budget, not dead-lettered at once), and runs once the
    # breaker lets it, with no history of its earlier deferrals
    runs.wait()
    drain(broker, worker)
    assert runs.ids == [message.message_id]
    assert runs.options[message.message_id][DEFERRALS] == 1
    assert len(logs.named("job.dead_lettered")) == 1
    assert redis_client.zcard(DEAD_LETTERS) == 0


def test_deferral_logs_carry_the_breakers_real_state(harness: Harness, logs: LogWatch) -> None:
    # Given a tagged actor that asks to be retried later (back-pressure) while its breaker is
    # HALF_OPEN
    slskd = harness.breaker("slskd-api", config(timeout=0.2, success_threshold=5))
    broker = harness.broker(slskd)
    runs = Runs(1)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api")
    def search() -> None:
        if not logs.named("job.deferred"):
            raise RetryLater("slskd-api", 0.2, "only one concurrent search")
        runs.record()

    force_open(slskd, 0.2)
    wait_until(lambda: slskd.state is CircuitState.HALF_OPEN, "the breaker to half-open")

    # When the message runs as a trial and raises RetryLater
    search.send()
    harness.start_worker(broker)
    runs.wait()

    # Then its job.deferred line names the breaker's real state, not a hard-coded "closed"
    (deferred,) = logs.named("job.deferred")
    assert deferred["state"] == "half_open"


def test_the_deferred_index_follows_a_message_deferred_by_two_services(
    harness: Harness, logs: LogWatch
) -> None:
    # Given a message refused by slskd-api's OPEN breaker, then held back by musicbrainz-api
    slskd = harness.breaker("slskd-api", config(timeout=HOLD_OPEN, success_threshold=1))
    broker = harness.broker(slskd)
    runs = Runs(1)
    held_back = threading.Event()
    release = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api")
    def enrich() -> None:
        if not held_back.is_set():
            held_back.set()
            raise RetryLater("musicbrainz-api", 1.0, "rate limit busy")
        runs.record()

    force_open(slskd, HOLD_OPEN)
    message = enrich.send()
    worker = harness.start_worker(broker)

    # When it is deferred first by slskd-api, then by musicbrainz-api
    logs.wait_for("job.deferred", count=2)

    # Then the index lists it once, under the service that holds it now
    assert broker.deferred.counts() == {"musicbrainz-api": 1}
    (job,) = broker.deferred.jobs()
    assert job.message_id == message.message_id and job.deferrals == 2
    release.set()

    # And once it ran, the index is empty, as the broker's queues are
    runs.wait()
    drain(broker, worker)
    assert broker.deferred.counts() == {}


@pytest.mark.faults
def test_an_unreachable_deferred_index_never_fails_or_duplicates_a_deferral(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis, redis_kind: RedisKind
) -> None:
    # Given a deferred index on a Redis that is down (the broker and breakers are fine)
    with EmbeddedRedis(executable=redis_kind.executable) as index_server:
        index = RedisDeferredIndex(redis.Redis.from_url(index_server.url, socket_timeout=1))
    slskd = harness.breaker("slskd-api", config(timeout=HOLD_OPEN, success_threshold=1))
    broker = harness.broker(slskd, index=index)
    runs = Runs(1)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api", max_retries=3)
    def download() -> None:
        runs.record()

    # When a message is deferred while OPEN (its index entry is due soon: written at once)
    force_open(slskd, HOLD_OPEN)
    message = download.send()
    worker = harness.start_worker(broker)
    logs.wait_for("job.deferred")

    # Then the failed index write is logged, and the message still runs exactly once, with no
    # retry spent and nothing dead-lettered
    runs.wait()
    drain(broker, worker)
    assert runs.ids == [message.message_id]
    assert runs.options[message.message_id].get("retries", 0) == 0
    assert redis_client.zcard(DEAD_LETTERS) == 0
    assert logs.named("job.bookkeeping_failed")


# -- cost for untagged actors ------------------------------------------------------------------

#: Commands only the breaker scripts run (Dramatiq's dispatch script runs none of them).
BREAKER_ONLY_COMMANDS = {"time", "hgetall", "hincrby", "publish"}
UNTAGGED_MESSAGES = 20


def _command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command (``INFO commandstats``), without the test's own INFO/CONFIG calls."""
    return dict(command_calls(client))


def _run_untagged(broker: RedisBroker, client: redis.Redis) -> dict[str, int]:
    """Run UNTAGGED_MESSAGES messages of an untagged actor; return the commands they cost."""
    done = Runs(UNTAGGED_MESSAGES)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="untagged")
    def untagged(n: int) -> None:
        done.record()

    client.config_resetstat()
    for n in range(UNTAGGED_MESSAGES):
        untagged.send(n)
    worker = Worker(broker, worker_timeout=WORKER_TIMEOUT, worker_threads=4)
    worker.start()
    try:
        done.wait()
        drain(broker, worker)
    finally:
        worker.stop()
    return _command_calls(client)


def test_an_untagged_actor_costs_no_breaker_command(
    harness: Harness, redis_url: str, redis_client: redis.Redis
) -> None:
    """Untagged messages issue no command for the breakers or the deferred index.

    Dramatiq's own dispatch is one EVALSHA per operation and its fetches depend on timing, so
    EVALSHA counts cannot be compared between runs. The check instead uses three facts that do
    not depend on timing: (1) the breakers and the index talk through their own client, named
    ``soulspot-breakers``, which never even connects (``CLIENT LIST``) if nothing is asked of
    it; (2) commands run inside Lua scripts are counted in ``INFO commandstats``, and the
    breaker scripts run TIME, HGETALL, HINCRBY and PUBLISH, which Dramatiq never runs (the
    baseline run of plain Dramatiq, without the middleware, proves it): none may appear; (3) no
    breaker or index key exists afterwards. Command *sets* are not compared with the baseline
    beyond that: Dramatiq's randomly scheduled maintenance adds command types to some runs.
    A tagged message afterwards shows that this accounting does see breaker commands.
    """
    # Given the command types plain Dramatiq uses for untagged messages
    plain = RedisBroker(url=redis_url, namespace=KEYS.dramatiq)
    try:
        baseline = _run_untagged(plain, redis_client)
    finally:
        plain.close()
    assert not BREAKER_ONLY_COMMANDS & set(baseline)

    # When the same messages run on a broker with the middleware
    broker = harness.broker()
    with_middleware = _run_untagged(broker, redis_client)

    # Then nothing was asked of the breakers' client, and no breaker command ran
    names = [client.get("name") for client in redis_client.client_list()]
    assert "soulspot-breakers" not in names
    assert not BREAKER_ONLY_COMMANDS & set(with_middleware)
    assert with_middleware.get("evalsha", 0) > 0  # the accounting saw Dramatiq's own work
    assert redis_client.keys("soulspot:breaker*") == []
    assert redis_client.keys("soulspot:deferred*") == []

    # And (the control) a tagged message does use them
    runs = Runs(1)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api")
    def tagged() -> None:
        runs.record()

    tagged.send()
    worker = harness.start_worker(broker)
    runs.wait()
    drain(broker, worker)
    assert "time" in _command_calls(redis_client)
    names = [client.get("name") for client in redis_client.client_list()]
    assert "soulspot-breakers" in names


# -- logs and results --------------------------------------------------------------------------


def test_a_deferral_logs_one_warning_and_the_worker_logs_nothing_for_it(
    harness: Harness, logs: LogWatch
) -> None:
    # Given the worker threads' log records, an OPEN breaker and three tagged messages
    records = WorkerThreadRecords()
    worker_log = logging.getLogger("dramatiq.worker.WorkerThread")
    worker_log.addHandler(records)
    try:
        slskd = harness.breaker("slskd-api", config(timeout=HOLD_OPEN, success_threshold=1))
        broker = harness.broker(slskd)
        runs = Runs(3)

        @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api")
        def download(n: int) -> None:
            runs.record()

        # ... and one message too old to run (AgeLimit skips it: a skip that is no deferral)
        expired = download.message_with_options(args=(0,), max_age=1_000)
        broker.enqueue(expired.copy(message_timestamp=expired.message_timestamp - 60_000))
        force_open(slskd, HOLD_OPEN)
        sent = [download.send(n) for n in range(3)]

        # When a worker defers the three and later runs them
        worker = harness.start_worker(broker)
        deferred = logs.wait_for("job.deferred", 3)
        runs.wait()
        drain(broker, worker)
    finally:
        worker_log.removeHandler(records)

    # Then each deferral logged one WARNING with its fields ...
    assert {e["message_id"] for e in deferred} == {m.message_id for m in sent}
    for event in deferred:
        assert event["log_level"] == "warning"
        assert event["actor"] == "download"
        assert event["service"] == "slskd-api"
        assert event["deferrals"] == 1
        assert event["retry_after"] > 0
    # ... and the worker thread logged nothing at WARNING or above but the expired message's skip
    # (a deferral is neither skipped nor an error: the refusal is a dramatiq.Retry)
    loud = [r for r in records.records if r.levelno >= logging.WARNING]
    assert [r.args[0].message_id for r in loud] == [expired.message_id]


def test_a_caller_waiting_for_a_deferred_messages_result_gets_the_real_result(
    harness: Harness, logs: LogWatch, redis_url: str
) -> None:
    # Given a broker storing results, an OPEN breaker and a tagged actor returning a value
    results_client = redis.Redis.from_url(redis_url)
    results = ResultsRedisBackend(client=results_client)
    try:
        slskd = harness.breaker("slskd-api", config(timeout=HOLD_OPEN, success_threshold=1))
        broker = harness.broker(slskd)
        broker.add_middleware(Results(backend=results))

        @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api", store_results=True)
        def lookup(n: int) -> int:
            return n * 2

        force_open(slskd, HOLD_OPEN)
        message = lookup.send(21)

        # When a caller blocks on its result while the message is deferred
        worker = harness.start_worker(broker)
        value = message.get_result(backend=results, block=True, timeout=int(DEADLINE * 1000))

        # Then it gets the value computed after recovery, not the None of the skipped original
        assert value == 42
        assert [e["message_id"] for e in logs.named("job.deferred")] == [message.message_id]
        drain(broker, worker)
    finally:
        results_client.close()


def test_a_service_failure_that_leaves_the_breaker_closed_spends_a_retry(
    harness: Harness, logs: LogWatch
) -> None:
    # Given a tagged actor whose service fails once, then answers, on a breaker that stays CLOSED
    slskd = harness.breaker("slskd-api", config(failure_threshold=5), is_failure=is_service_failure)
    broker = harness.broker(slskd)
    runs = Runs(1)
    failures_left = [1]

    @dramatiq.actor(
        broker=broker,
        queue_name=QUEUE,
        service="slskd-api",
        max_retries=3,
        min_backoff=10,
        max_backoff=10,
    )
    def search() -> None:
        if failures_left[0]:
            failures_left[0] -= 1
            raise ServiceUnavailableError("slskd-api", "connection refused")
        runs.record()

    # When it runs
    message = search.send()
    harness.start_worker(broker)
    runs.wait()

    # Then the failure was counted by the breaker and the message retried by Dramatiq (its own
    # failed attempt, bounded by max_retries), not deferred
    assert logs.named("job.deferred") == []
    assert runs.options[message.message_id]["retries"] == 1
    assert DEFERRALS not in runs.options[message.message_id]
    assert slskd.stats.total_failures == 1


def test_a_failure_that_opens_the_breaker_spends_a_retry_that_waits_out_its_timeout(
    harness: Harness, logs: LogWatch
) -> None:
    # Given a breaker that opens at the first failure, for 0.5 s
    slskd = harness.breaker(
        "slskd-api", config(failure_threshold=1, timeout=HOLD_OPEN), is_failure=is_service_failure
    )
    broker = harness.broker(slskd)
    runs = Runs(1)
    failures_left = [1]

    @dramatiq.actor(
        broker=broker, queue_name=QUEUE, service="slskd-api", max_retries=1, min_backoff=10
    )
    def search() -> None:
        if failures_left[0]:
            failures_left[0] -= 1
            raise ServiceUnavailableError("slskd-api", "timed out")
        runs.record()

    # When its failure opens the breaker
    message = search.send()
    harness.start_worker(broker)
    runs.wait()

    # Then the failed attempt spent a retry (it ran), and the retry waited out the breaker's
    # timeout, not the 10 ms backoff, listed as deferred meanwhile
    [deferral] = logs.named("job.deferred")
    assert deferral["retry_after"] >= HOLD_OPEN
    assert deferral["delay"] >= HOLD_OPEN
    assert runs.options[message.message_id]["retries"] == 1
    assert runs.options[message.message_id][DEFERRED_BY] == "slskd-api"
    assert logs.named("circuit_breaker.opened")


def test_a_bug_in_a_tagged_actor_is_retried_normally_and_never_trips_the_breaker(
    harness: Harness, logs: LogWatch
) -> None:
    # Given a tagged actor with a bug, on a breaker that would open at the first failure
    slskd = harness.breaker("slskd-api", config(failure_threshold=1), is_failure=is_service_failure)
    broker = harness.broker(slskd)
    runs = Runs(2)

    @dramatiq.actor(
        broker=broker, queue_name=QUEUE, service="slskd-api", max_retries=1, min_backoff=10
    )
    def search() -> None:
        runs.record()
        raise KeyError("a bug, not an outage")

    # When it runs and fails
    search.send()
    worker = harness.start_worker(broker)
    runs.wait()
    drain(broker, worker)

    # Then Dramatiq retried it (the bug is the job's), nothing was deferred, the breaker is CLOSED
    assert logs.named("job.deferred") == []
    stats = slskd.stats
    assert stats.state is CircuitState.CLOSED
    assert stats.total_failures == 0
