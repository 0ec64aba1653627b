"""The circuit-breaker middleware on a real Worker, a real RedisBroker and a real Redis.

Timing: the Redis broker starts a delayed message 1.5-2.5 s after its eta (an idle delay-queue
consumer backs off for up to 1 s), so breakers are held OPEN for well under a second and every
wait is an event (a structlog event, a threading.Event set by an actor) or a ``broker.join``
with a deadline; polling is used only for conditions no event announces, always with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
import structlog
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend as ResultsRedisBackend

from soulspot_jobs.broker import build_broker
from soulspot_jobs.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    RedisBackend,
)
from soulspot_jobs.deferred import RedisDeferredIndex
from soulspot_jobs.errors import RetryLater, ServiceUnavailableError, is_service_failure
from soulspot_jobs.middleware import (
    DEAD_LETTER_REASON,
    DEFERRALS,
    DEFERRED_BY,
    CircuitBreakerMiddleware,
)
from soulspot_jobs.redis_server import EmbeddedRedis
from soulspot_jobs.redis_stats import command_calls
from soulspot_jobs.settings import load_settings
from tests.polling import wait_until
from tests.servers import RedisKind

#: Queue of every test actor.
QUEUE = "jobs"
#: Key prefix of the breakers (what build_broker uses with the default key prefix).
BREAKER_PREFIX = "soulspot:breaker"
#: Namespace of the broker's keys (build_broker with the default key prefix).
NAMESPACE = "soulspot:dramatiq"
#: Dead-letter queue (sorted set) and its messages (hash) of QUEUE.
DEAD_LETTERS = f"{NAMESPACE}:{QUEUE}.XQ"
DEAD_LETTER_MESSAGES = f"{DEAD_LETTERS}.msgs"
#: Seconds between refreshes of the breakers' local views (short, so views follow quickly).
REFRESH_INTERVAL = 0.05
#: Milliseconds a worker waits on an empty queue before polling again.
WORKER_TIMEOUT = 50
#: Seconds a breaker is forced OPEN in these tests.
HOLD_OPEN = 0.5
#: Seconds any single wait may take before the test fails instead of hanging.
DEADLINE = 20.0
#: The worker thread's own log line for skipped messages.
SKIP_LOG_MESSAGE = "Message %s was skipped."


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
            prefix=BREAKER_PREFIX,
            refresh_interval=REFRESH_INTERVAL,
        )
        self._brokers: list[RedisBroker] = []
        self._workers: list[Worker] = []

    def broker(
        self, *breakers: CircuitBreaker, **options: Any
    ) -> tuple[RedisBroker, CircuitBreakerMiddleware]:
        """A broker from ``build_broker`` plus CurrentMessage, with ``breakers`` by name."""
        broker = build_broker(
            self.settings,
            backend=self.backend,
            breakers={b.name: b for b in breakers},
            **options,
        )
        broker.add_middleware(CurrentMessage())
        self._brokers.append(broker)
        (middleware,) = [m for m in broker.middleware if isinstance(m, CircuitBreakerMiddleware)]
        return broker, middleware

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


# -- deferral while OPEN -----------------------------------------------------------------------


def test_messages_refused_by_an_open_breaker_are_deferred_then_run_exactly_once(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis
) -> None:
    """100 messages meet an OPEN breaker: all deferred (none run, none failed), all run later."""
    # Given an slskd-api breaker held OPEN for 1 s and 100 messages of a tagged actor
    total, hold = 100, 1.0
    slskd = harness.breaker("slskd-api", config(timeout=1.0, success_threshold=1))
    broker, middleware = harness.broker(slskd)
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
    assert middleware.index.counts() == {"slskd-api": total}
    assert {job.message_id for job in middleware.index.jobs("slskd-api")} == set(sent)
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
    assert middleware.index.counts() == {}
    assert redis_client.zcard(DEAD_LETTERS) == 0
    assert slskd.stats.total_failures == 1  # only the one that forced it open


def test_an_async_actor_is_deferred_while_open_and_runs_later(
    harness: Harness, logs: LogWatch
) -> None:
    # Given an OPEN slskd-api breaker and an async tagged actor
    slskd = harness.breaker("slskd-api", config(timeout=HOLD_OPEN, success_threshold=1))
    broker, middleware = harness.broker(slskd)
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
    assert middleware.index.counts() == {}


def test_a_breaker_error_raised_inside_an_async_actor_defers_it(
    harness: Harness, logs: LogWatch
) -> None:
    # Given an async musicbrainz-api actor awaiting spotify-api, whose breaker is OPEN
    musicbrainz = harness.breaker("musicbrainz-api", config(failure_threshold=1))
    spotify = harness.breaker("spotify-api", config(timeout=HOLD_OPEN, success_threshold=1))
    broker, middleware = harness.broker(musicbrainz, spotify)
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
    assert middleware.index.counts() == {}


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
    broker, middleware = harness.broker(slskd)

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
    assert middleware.index.counts() == {}


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
            redis_url, prefix=BREAKER_PREFIX, refresh_interval=REFRESH_INTERVAL
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
    broker, middleware = harness.broker(slskd)
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
            jobs = middleware.index.jobs("slskd-api")
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
    broker, middleware = harness.broker(musicbrainz, spotify)
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
    assert middleware.index.counts() == {"spotify-api": 1}

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
    assert middleware.index.counts() == {}
    assert redis_client.zcard(DEAD_LETTERS) == 0


def test_an_excluded_exception_fails_the_message_without_tripping_or_deferring(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis
) -> None:
    # Given a breaker that opens at the first failure but excludes ValueError
    slskd = harness.breaker("slskd-api", config(failure_threshold=1), exclude=(ValueError,))
    broker, middleware = harness.broker(slskd)

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
    assert middleware.index.counts() == {}


def test_a_time_limit_exceeded_counts_as_a_failure_and_opens_the_breaker(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis
) -> None:
    # Given a breaker that opens at the first failure and an actor that outlives its time limit
    slskd = harness.breaker("slskd-api", config(failure_threshold=1, timeout=60.0))
    broker, middleware = harness.broker(slskd)

    @dramatiq.actor(
        broker=broker, queue_name=QUEUE, service="slskd-api", time_limit=50, max_retries=0
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

    # And the message, whose failure opened the breaker, waits out the timeout instead of being
    # failed: deferred by about 60 s, not dead-lettered, no retry spent
    (deferred,) = logs.wait_for("job.deferred")
    assert deferred["message_id"] == message.message_id
    assert deferred["state"] == "open"
    assert deferred["retry_after"] >= 59
    assert middleware.index.counts() == {"slskd-api": 1}
    assert redis_client.zcard(DEAD_LETTERS) == 0


def test_a_message_past_its_deferral_budget_is_dead_lettered_with_a_reason(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis
) -> None:
    # Given an actor with a 1 ms deferral budget, and an OPEN breaker
    slskd = harness.breaker("slskd-api", config(timeout=60.0))
    broker, middleware = harness.broker(slskd)
    runs = Runs(1)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api", max_deferral=1)
    def download(n: int) -> None:
        runs.record()

    force_open(slskd, HOLD_OPEN)
    message = download.send(1)
    worker = harness.start_worker(broker)
    logs.wait_for("job.deferred")
    # ... and still OPEN when the deferred copy comes back: the trial fails and reopens it
    wait_until(lambda: slskd.state is CircuitState.HALF_OPEN, "the breaker to half-open")
    force_open(slskd, 30.0)

    # When the message comes back, past its budget
    (dead,) = logs.wait_for("job.dead_lettered")
    drain(broker, worker)

    # Then it is in the dead-letter queue, marked with the reason, logged as an ERROR
    (lettered,) = dead_lettered(redis_client)
    assert lettered.message_id == message.message_id
    assert "past the budget" in lettered.options[DEAD_LETTER_REASON]
    assert dead["log_level"] == "error"
    assert dead["message_id"] == message.message_id
    assert dead["reason"] == lettered.options[DEAD_LETTER_REASON]
    assert runs.times == []
    assert middleware.index.counts() == {}


def test_a_requeued_dead_letter_runs_with_a_fresh_budget(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis
) -> None:
    # Given a message dead-lettered past its deferral budget while the breaker was OPEN
    slskd = harness.breaker("slskd-api", config(timeout=60.0))
    requeued: list[str] = []
    broker, middleware = harness.broker(slskd, on_requeue=lambda m: requeued.append(m.message_id))
    runs = Runs(1)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api", max_deferral=1)
    def download(n: int) -> None:
        runs.record()

    force_open(slskd, HOLD_OPEN)
    message = download.send(1)
    worker = harness.start_worker(broker)
    logs.wait_for("job.deferred")
    wait_until(lambda: slskd.state is CircuitState.HALF_OPEN, "the breaker to half-open")
    force_open(slskd, 30.0)
    logs.wait_for("job.dead_lettered")
    wait_until(lambda: redis_client.zcard(DEAD_LETTERS) == 1, "the message to be dead-lettered")
    (lettered,) = dead_lettered(redis_client)

    # When the service recovers and a tool re-enqueues the dead letter exactly as it is stored
    # (reason and history included), as dramatiq-dashboard does
    slskd.reset_sync()
    broker.enqueue(lettered)

    # Then it runs once, with no deferral history, and the requeue is reported
    runs.wait()
    drain(broker, worker)
    assert runs.ids == [message.message_id]
    options = runs.options[message.message_id]
    assert DEAD_LETTER_REASON not in options and DEFERRALS not in options
    assert requeued == [message.message_id]
    assert logs.named("job.requeued")
    assert len(logs.named("job.dead_lettered")) == 1


def test_deferral_logs_carry_the_breakers_real_state(harness: Harness, logs: LogWatch) -> None:
    # Given a tagged actor that asks to be retried later (back-pressure) while its breaker is
    # HALF_OPEN
    slskd = harness.breaker("slskd-api", config(timeout=0.2, success_threshold=5))
    broker, _ = harness.broker(slskd)
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
    broker, middleware = harness.broker(slskd)
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
    assert middleware.index.counts() == {"musicbrainz-api": 1}
    (job,) = middleware.index.jobs()
    assert job.message_id == message.message_id and job.deferrals == 2
    release.set()

    # And once it ran, the index is empty, as the broker's queues are
    runs.wait()
    drain(broker, worker)
    assert middleware.index.counts() == {}


@pytest.mark.faults
def test_an_unreachable_deferred_index_never_fails_or_duplicates_a_deferral(
    harness: Harness, logs: LogWatch, redis_client: redis.Redis, redis_kind: RedisKind
) -> None:
    # Given a deferred index on a Redis that is down (the broker and breakers are fine)
    with EmbeddedRedis(executable=redis_kind.executable) as index_server:
        index = RedisDeferredIndex(redis.Redis.from_url(index_server.url, socket_timeout=1))
    slskd = harness.breaker("slskd-api", config(timeout=HOLD_OPEN, success_threshold=1))
    broker, _ = harness.broker(slskd, index=index)
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
    plain = RedisBroker(url=redis_url, namespace=NAMESPACE)
    try:
        baseline = _run_untagged(plain, redis_client)
    finally:
        plain.close()
    assert not BREAKER_ONLY_COMMANDS & set(baseline)

    # When the same messages run on a broker with the middleware
    broker, _ = harness.broker()
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


def test_a_deferral_logs_a_warning_but_not_the_workers_skipped_warning(
    harness: Harness, logs: LogWatch
) -> None:
    # Given the worker threads' log records, an OPEN breaker and three tagged messages
    records = WorkerThreadRecords()
    worker_log = logging.getLogger("dramatiq.worker.WorkerThread")
    worker_log.addHandler(records)
    try:
        slskd = harness.breaker("slskd-api", config(timeout=HOLD_OPEN, success_threshold=1))
        broker, _ = harness.broker(slskd)
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
    # ... and the worker's "was skipped" warning appeared only for the expired message
    skipped = [r for r in records.records if r.msg == SKIP_LOG_MESSAGE]
    assert [r.args[0].message_id for r in skipped] == [expired.message_id]


def test_a_caller_waiting_for_a_deferred_messages_result_gets_the_real_result(
    harness: Harness, logs: LogWatch, redis_url: str
) -> None:
    # Given a broker storing results, an OPEN breaker and a tagged actor returning a value
    results_client = redis.Redis.from_url(redis_url)
    results = ResultsRedisBackend(client=results_client)
    try:
        slskd = harness.breaker("slskd-api", config(timeout=HOLD_OPEN, success_threshold=1))
        broker, _ = harness.broker(slskd)
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
    broker, _ = harness.broker(slskd)
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


def test_a_failure_that_opens_the_breaker_defers_the_message_until_its_timeout(
    harness: Harness, logs: LogWatch
) -> None:
    # Given a breaker that opens at the first failure, for 0.5 s
    slskd = harness.breaker(
        "slskd-api", config(failure_threshold=1, timeout=HOLD_OPEN), is_failure=is_service_failure
    )
    broker, _ = harness.broker(slskd)
    runs = Runs(1)
    failures_left = [1]

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api", max_retries=0)
    def search() -> None:
        if failures_left[0]:
            failures_left[0] -= 1
            raise ServiceUnavailableError("slskd-api", "timed out")
        runs.record()

    # When its failure opens the breaker
    search.send()
    harness.start_worker(broker)
    runs.wait()

    # Then the message waited out the breaker's timeout before it came back
    [deferral] = logs.named("job.deferred")
    assert deferral["retry_after"] >= HOLD_OPEN
    assert logs.named("circuit_breaker.opened")


def test_a_bug_in_a_tagged_actor_is_retried_normally_and_never_trips_the_breaker(
    harness: Harness, logs: LogWatch
) -> None:
    # Given a tagged actor with a bug, on a breaker that would open at the first failure
    slskd = harness.breaker("slskd-api", config(failure_threshold=1), is_failure=is_service_failure)
    broker, _ = harness.broker(slskd)
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
