"""The demo's tally counts the retries and deferrals messages really went through, on a real
Worker, a real RedisBroker and a real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker

from soulspot_jobs.broker import build_broker
from soulspot_jobs.deferral.index import DeferredJob
from soulspot_jobs.demo.tally import RunTally, deferred_runs, read_tally
from soulspot_jobs.keys import Keys
from soulspot_jobs.settings import load_settings
from tests.polling import wait_until

KEYS = Keys("tally-test")
SERVICES = ("slskd-api", "spotify-api")
#: Seconds a breaker is held OPEN, and the most any wait may take.
HOLD_OPEN = 0.3
DEADLINE = 20.0


@pytest.fixture
def broker(redis_url: str) -> Iterator[tuple[RedisBroker, list[DeferredJob]]]:
    """The jobs broker with the tally added, as the demo's workers have it; and its deferrals."""
    deferrals: list[DeferredJob] = []
    settings = load_settings(REDIS_URL=redis_url, SOULSPOT_KEY_PREFIX=KEYS.prefix)
    broker = build_broker(settings, on_defer=lambda message, job: deferrals.append(job))
    broker.add_middleware(RunTally(broker.client, broker.keys))
    yield broker, deferrals
    broker.close()


@pytest.fixture
def worker(broker: tuple[RedisBroker, list[DeferredJob]]) -> Iterator[Worker]:
    worker = Worker(broker[0], worker_threads=2, worker_timeout=50)
    worker.start()
    yield worker
    worker.stop()


def test_the_tally_counts_each_dramatiq_retry_once(
    broker: tuple[RedisBroker, list[DeferredJob]], worker: Worker, redis_client: redis.Redis
) -> None:
    # Given an actor that fails (not its service's fault) on its first two runs
    runs: list[int] = []
    done = threading.Event()

    @dramatiq.actor(broker=broker[0], service="slskd-api", max_retries=3, min_backoff=10)
    def flaky() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise ValueError("a bug, not an outage")
        done.set()

    # When it is sent and runs to success
    flaky.send()
    assert done.wait(DEADLINE)

    # Then the tally shows the two retries Dramatiq spent, and no deferral
    wait_until(lambda: read_tally(redis_client, KEYS, SERVICES)["retries"] == 2, "2 retries")
    assert read_tally(redis_client, KEYS, SERVICES)["deferrals"] == {
        "slskd-api": 0,
        "spotify-api": 0,
    }


def test_the_tally_counts_the_deferrals_of_a_message_held_back_by_an_open_breaker(
    broker: tuple[RedisBroker, list[DeferredJob]], worker: Worker, redis_client: redis.Redis
) -> None:
    # Given the spotify-api breaker held OPEN for a moment
    jobs_broker, deferrals = broker
    spotify = jobs_broker.breakers["spotify-api"]
    spotify.record_failure_sync(spotify.acquire_sync(), hold_open=HOLD_OPEN)
    done = threading.Event()

    @dramatiq.actor(broker=jobs_broker, service="spotify-api")
    def import_something() -> None:
        done.set()

    # When a message of that service is sent, deferred, and runs once the breaker admits it
    import_something.send()
    assert done.wait(DEADLINE)

    # Then the tally holds as many deferrals as the middleware made, and no retry
    tally = read_tally(redis_client, KEYS, SERVICES)
    assert len(deferrals) >= 1
    assert tally == {"retries": 0, "deferrals": {"slskd-api": 0, "spotify-api": len(deferrals)}}
    # and its keys expire
    assert redis_client.ttl(KEYS.demo_deferrals("spotify-api")) > 0


def _redis_now(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1_000_000


def test_the_tally_records_when_a_deferred_message_started_to_run_by_the_redis_clock(
    broker: tuple[RedisBroker, list[DeferredJob]], worker: Worker, redis_client: redis.Redis
) -> None:
    # Given the spotify-api breaker held OPEN for a moment, and an actor that takes 0.2 s
    jobs_broker, deferrals = broker
    spotify = jobs_broker.breakers["spotify-api"]
    done = threading.Event()
    began: list[float] = []

    @dramatiq.actor(broker=jobs_broker, service="spotify-api")
    def import_something() -> None:
        began.append(_redis_now(redis_client))
        time.sleep(0.2)
        done.set()

    # When a message of that service is refused, deferred, and runs once the breaker admits it
    before = _redis_now(redis_client)
    spotify.record_failure_sync(spotify.acquire_sync(), hold_open=HOLD_OPEN)
    import_something.send()
    assert done.wait(DEADLINE)

    # Then one start is recorded (the refusal is none), when the actor began, not when it ended
    wait_until(lambda: deferred_runs(redis_client, KEYS, "spotify-api", before), "the start")
    (started,) = deferred_runs(redis_client, KEYS, "spotify-api", before)
    assert before + HOLD_OPEN <= started <= began[0] + 0.05
    assert deferred_runs(redis_client, KEYS, "spotify-api", started + 0.001) == []
    assert redis_client.ttl(KEYS.demo_deferred_runs("spotify-api")) > 0
