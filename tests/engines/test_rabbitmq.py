"""The middleware on a real RabbitMQ: messages in RabbitMQ, breakers and records in Redis.

``build_broker`` with an ``amqp://`` URL gives Dramatiq's RabbitmqBroker with the same middleware
order as the Redis broker; deferrals are RabbitMQ delayed messages (Dramatiq's ``<queue>.DQ``)
and dead letters land in RabbitMQ's dead-letter queue (``<queue>.XQ``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pika
import pytest
import redis
import structlog
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from soulspot_jobs.broker import build_broker
from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.deferral.dead_letters import DeadLetters, DeadLettersUnsupported
from soulspot_jobs.deferral.options import DEFERRALS, FIRST_DEFERRED_AT
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.middleware.breakers import CircuitBreakerMiddleware
from soulspot_jobs.middleware.recovery import Recovery
from soulspot_jobs.settings import load_settings
from tests.jobs.conftest import Fakes, finished, running, settings_for
from tests.polling import wait_until
from tests.rabbitmq_server import EmbeddedRabbitMQ

#: Seconds a breaker stays OPEN in these tests.
OPEN_FOR = 1.0
#: Milliseconds a worker waits on an empty queue before polling again.
WORKER_TIMEOUT = 50
#: Milliseconds of Dramatiq's retry backoff in the comparison with plain Dramatiq.
BACKOFF = 100
#: Seconds a message may come back early: eta and the breaker's clock are rounded to ms.
CLOCK_SLACK = 0.05


def _queue() -> str:
    """A queue name of this test's own: the RabbitMQ node lives for the whole session."""
    return f"engines-{uuid.uuid4().hex[:8]}"


def _guarded(rabbitmq: EmbeddedRabbitMQ, redis_url: str, **breaker: Any) -> dramatiq.Broker:
    settings = load_settings(
        REDIS_URL=redis_url,
        BROKER_URL=rabbitmq.url,
        observability={"circuit_breaker": breaker},
    )
    return build_broker(settings, jitter_ratio=0.0)


def _middleware(broker: dramatiq.Broker) -> CircuitBreakerMiddleware:
    return next(m for m in broker.middleware if isinstance(m, CircuitBreakerMiddleware))


@contextmanager
def _working(broker: dramatiq.Broker, threads: int = 2) -> Iterator[dramatiq.Worker]:
    worker = dramatiq.Worker(broker, worker_timeout=WORKER_TIMEOUT, worker_threads=threads)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
        broker.close()


def _dead_letters(rabbitmq: EmbeddedRabbitMQ, queue: str) -> list[dramatiq.Message]:
    """The messages in ``queue``'s dead-letter queue (``<queue>.XQ``), read through AMQP."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    try:
        channel = connection.channel()
        found = []
        while True:
            method, _, body = channel.basic_get(queue=f"{queue}.XQ", auto_ack=False)
            if method is None:
                return found
            found.append(dramatiq.Message.decode(body))
    finally:
        connection.close()  # unacked reads go back to the queue


def test_build_broker_with_an_amqp_url_keeps_the_middleware_order_and_breakers_in_redis(
    rabbitmq: EmbeddedRabbitMQ, redis_url: str
) -> None:
    # Given settings with BROKER_URL on RabbitMQ and REDIS_URL on Redis
    # When the broker is built
    broker = _guarded(rabbitmq, redis_url)
    try:
        # Then it is a RabbitmqBroker with the middleware of the Redis broker, in the same order
        # (the breaker right after the Retries it reports to), but for Recovery (RabbitMQ
        # itself redelivers a dead consumer's messages), and its Redis is REDIS_URL
        redis_broker = build_broker(load_settings(REDIS_URL=redis_url))
        expected = [type(m).__name__ for m in redis_broker.middleware if type(m) is not Recovery]
        redis_broker.close()
        names = [type(m).__name__ for m in broker.middleware]
        assert isinstance(broker, RabbitmqBroker)
        assert names == expected
        assert names.index("CircuitBreakerMiddleware") == names.index("DeferringRetries") + 1
        assert broker.redis.ping()
        kwargs = broker.redis.connection_pool.connection_kwargs
        assert str(kwargs["port"]) in redis_url
    finally:
        broker.close()


def test_dead_letters_of_a_rabbitmq_broker_are_refused_with_where_they_are(
    rabbitmq: EmbeddedRabbitMQ, redis_url: str
) -> None:
    # Given a RabbitMQ broker
    broker = _guarded(rabbitmq, redis_url)
    try:
        # When the Redis dead-letter reader is asked for its dead letters
        # Then it refuses, naming where they are
        with pytest.raises(DeadLettersUnsupported, match=r"RabbitMQ's <queue>\.XQ"):
            DeadLetters(broker)
    finally:
        broker.close()


def test_a_tagged_message_deferred_while_open_comes_back_after_retry_after_and_runs_once(
    rabbitmq: EmbeddedRabbitMQ, redis_url: str
) -> None:
    # Given a RabbitMQ broker whose slskd breaker is OPEN for OPEN_FOR seconds
    queue = _queue()
    broker = _guarded(rabbitmq, redis_url, success_threshold=1)
    ran: list[float] = []

    @dramatiq.actor(broker=broker, queue_name=queue, service="slskd-api")
    def download() -> None:
        ran.append(time.monotonic())

    breaker = _middleware(broker).breaker("slskd-api")
    breaker.record_failure_sync(breaker.acquire_sync(), hold_open=OPEN_FOR)
    open_until = time.monotonic() + OPEN_FOR

    # When a message is sent and a worker runs
    with structlog.testing.capture_logs() as logs, _working(broker) as worker:
        download.send()

        # Then it runs once, only after the breaker's retry_after, with no retry spent
        wait_until(lambda: ran, "the deferred message to run", timeout=20)
        broker.join(queue)
        worker.join()
    assert len(ran) == 1
    assert ran[0] >= open_until - CLOCK_SLACK
    deferred = [e for e in logs if e.get("event_name") == "job.deferred"]
    assert len(deferred) == 1 and deferred[0]["service"] == "slskd-api"
    assert _dead_letters(rabbitmq, queue) == []


def test_the_deferral_budget_dead_letters_to_rabbitmqs_dead_letter_queue_with_the_reason(
    rabbitmq: EmbeddedRabbitMQ, redis_url: str
) -> None:
    # Given an slskd actor with a deferral budget of 0.5 s, a message first deferred a minute
    # ago, and slskd's breaker held OPEN
    queue = _queue()
    broker = _guarded(rabbitmq, redis_url, failure_threshold=1, timeout=0.2)
    broker.breakers["slskd-api"].force_open_sync(60.0)
    attempts: list[float] = []

    @dramatiq.actor(broker=broker, queue_name=queue, service="slskd-api", max_deferral=500)
    def download() -> None:
        attempts.append(time.monotonic())

    # When a message is sent and a worker runs until it is in the dead-letter queue
    with _working(broker):
        long_ago = int((time.time() - 60) * 1000)
        message = download.send_with_options(**{FIRST_DEFERRED_AT: long_ago, DEFERRALS: 3})
        wait_until(lambda: _dead_letters(rabbitmq, queue), "a dead letter", timeout=20)

    # Then RabbitMQ's dead-letter queue holds the message once, never run, and the budget is
    # the reason kept beside it in Redis
    [dead] = _dead_letters(rabbitmq, queue)
    assert dead.message_id == message.message_id
    assert dead.options.get("retries", 0) == 0
    assert "past the budget of 0.5 s" in broker.dead_letter_reasons.get(message.message_id)
    assert attempts == []


@dataclass
class Seen:
    """What a user of plain Dramatiq sees of one run: attempts per actor and dead letters."""

    attempts: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, name: str) -> None:
        with self.lock:
            self.attempts[name] = self.attempts.get(name, 0) + 1


def _untagged_run(
    rabbitmq: EmbeddedRabbitMQ, make_broker: Callable[[], dramatiq.Broker]
) -> Seen:
    """A flaky and a broken untagged actor on a fresh broker; what plain Dramatiq shows."""
    queue, broker, seen = _queue(), make_broker(), Seen()
    options = {"queue_name": queue, "min_backoff": BACKOFF, "max_backoff": BACKOFF}

    @dramatiq.actor(broker=broker, max_retries=3, **options)
    def flaky() -> None:
        seen.attempt("flaky")
        if seen.attempts["flaky"] < 3:
            raise ConnectionError("transient")

    @dramatiq.actor(broker=broker, max_retries=1, **options)
    def broken() -> None:
        seen.attempt("broken")
        raise ConnectionError("always")

    with _working(broker) as worker:
        flaky.send()
        broken.send()
        wait_until(lambda: _dead_letters(rabbitmq, queue), "the broken message to dead-letter")
        wait_until(lambda: seen.attempts.get("flaky") == 3, "the flaky message to succeed")
        broker.join(queue)
        worker.join()
    seen.dead_letters = len(_dead_letters(rabbitmq, queue))
    return seen


def test_untagged_actors_behave_as_on_plain_dramatiq_and_cost_no_breaker_key(
    rabbitmq: EmbeddedRabbitMQ, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given the same untagged actors on plain Dramatiq's RabbitmqBroker
    plain = _untagged_run(rabbitmq, lambda: RabbitmqBroker(url=rabbitmq.url))

    # When they run on a broker built with the middleware
    guarded = _untagged_run(rabbitmq, lambda: _guarded(rabbitmq, redis_url))

    # Then attempts and dead letters are the same, and no breaker or index key was written
    assert plain.attempts == {"flaky": 3, "broken": 2}
    assert (guarded.attempts, guarded.dead_letters) == (plain.attempts, plain.dead_letters)
    assert redis_client.keys("soulspot:breaker*") == []
    assert redis_client.keys("soulspot:deferred*") == []


@pytest.fixture
def rabbitmq_app(
    rabbitmq: EmbeddedRabbitMQ, redis_url: str, fakes: Fakes
) -> Iterator[SoulspotJobs]:
    """The jobs app with its messages on RabbitMQ, its breakers and records on Redis."""
    settings = settings_for(redis_url, fakes, failure_threshold=2, timeout=1.0)
    settings = settings.model_copy(update={"broker_url": rabbitmq.url})
    app = SoulspotJobs(settings)
    assert isinstance(app.broker, RabbitmqBroker)
    yield app


def test_the_job_chain_on_rabbitmq_survives_an_slskd_outage(
    rabbitmq_app: SoulspotJobs, fakes: Fakes, redis_client: redis.Redis
) -> None:
    # Given downloads in progress on RabbitMQ, on slow transfers
    app = rabbitmq_app
    fakes.slskd.transfer_duration = 2.0
    with structlog.testing.capture_logs() as logs, running(app):
        downloads = [app.enqueue_download(f"{t.artist} - {t.title}") for t in CATALOG[:3]]
        wait_until(
            lambda: all(app.job(j).state is JobState.DOWNLOADING for j in downloads),
            what="every download to be in progress",
        )

        # When slskd goes down (connections refused) in the middle of the downloads
        fakes.slskd.faults.outage(3.0, mode="refuse")
        enrichments = [app.enqueue_enrichment(t.artist, t.title) for t in CATALOG[:3]]

        # Then the MusicBrainz jobs complete while slskd is still down ...
        enriched = finished(app, enrichments)
        assert [job.state for job in enriched] == [JobState.DONE] * 3
        assert app.breakers["slskd-api"].state is not CircuitState.CLOSED
        # ... and after slskd recovers every download completes
        done = finished(app, downloads)

    assert [job.state for job in done] == [JobState.DONE] * 3
    deferred = [e for e in logs if e.get("event_name") == "job.deferred"]
    assert deferred and {e["service"] for e in deferred} == {"slskd-api"}
    # The job records and the breakers live in Redis; no Dramatiq queue does
    assert all(redis_client.exists(f"soulspot:jobs:job:{job_id}") for job_id in downloads)
    assert redis_client.exists("soulspot:breaker:slskd-api")
    assert redis_client.keys("soulspot:dramatiq*") == []
