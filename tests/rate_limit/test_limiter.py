"""The shared rate limiters: slots ``min_interval`` apart for every thread, process and host.

Behaviour is checked on both limiters with a clock the test moves (exact numbers), then in real
time: threads of one process, and threads of several spawned processes sharing one Redis key,
whose acquisitions are timed by the Redis server's clock.
"""

from __future__ import annotations

import multiprocessing
import queue
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from soulspot_jobs.errors import ConfigurationError, RetryLater
from soulspot_jobs.rate_limit import (
    BUSY_REASON,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
)
from soulspot_jobs.rate_limit.limiter import UNREACHABLE_REASON, UNREACHABLE_RETRY_AFTER

#: Seconds between two slots in the real-time tests.
INTERVAL = 0.2
#: Seconds by which two recorded acquisition times may fall short of ``INTERVAL``: the time
#: from a slot's start to its reading (waking from sleep, one round trip) varies by a few ms.
READING_SLACK = 0.015
#: Redis key of the limiter under test.
KEY = "test:rate-limit"
#: Worker processes and threads per process of the multi-process tests.
PROCESSES, THREADS = 2, 3
#: Seconds a barrier or a child's report may take before the test fails (covers spawn start-up).
CHILD_TIMEOUT = 30.0

SPAWN = multiprocessing.get_context("spawn")


class FakeTime:
    """A clock the test moves by hand; its ``sleep`` records the wait and moves the clock."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


MakeLimiter = Callable[..., RateLimiter]


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request: pytest.FixtureRequest) -> MakeLimiter:
    """Builds the limiter under test: ``make_limiter(min_interval, clock=..., sleep=...)``."""
    if request.param == "memory":
        return MemoryRateLimiter
    client = request.getfixturevalue("redis_client")
    return lambda min_interval, **kwargs: RedisRateLimiter(client, KEY, min_interval, **kwargs)


def _gaps(times: list[float]) -> list[float]:
    ordered = sorted(times)
    return [later - earlier for earlier, later in zip(ordered, ordered[1:], strict=False)]


# -- behaviour, on a clock the test moves ---------------------------------------------------------


def test_the_first_acquire_does_not_wait(make_limiter: MakeLimiter) -> None:
    # Given an idle limiter
    clock = FakeTime()
    limiter = make_limiter(0.25, clock=clock, sleep=clock.sleep)
    # When one request acquires a slot
    limiter.acquire(max_wait=1.0)
    # Then it goes at once
    assert clock.sleeps == []


def test_back_to_back_acquires_sleep_until_their_slots(make_limiter: MakeLimiter) -> None:
    # Given a limiter of one request per 0.25 s
    clock = FakeTime()
    sleeps: list[float] = []
    limiter = make_limiter(0.25, clock=clock, sleep=sleeps.append)
    # When three requests acquire at the same instant
    for _ in range(3):
        limiter.acquire(max_wait=1.0)
    # Then they go at once, after 0.25 s and after 0.5 s: their slots are 0.25 s apart
    assert sleeps == pytest.approx([0.25, 0.5])


def test_an_acquire_beyond_max_wait_raises_retry_later_and_reserves_nothing(
    make_limiter: MakeLimiter,
) -> None:
    # Given a limiter whose next slot is 0.25 s away
    clock = FakeTime()
    limiter = make_limiter(0.25, clock=clock, sleep=clock.sleep, service="musicbrainz-api")
    limiter.acquire(max_wait=1.0)
    # When a request will wait at most 0.1 s
    with pytest.raises(RetryLater) as refused:
        limiter.acquire(max_wait=0.1)
    # Then it is told to come back when that slot is free, without sleeping
    assert refused.value.service == "musicbrainz-api"
    assert refused.value.reason == BUSY_REASON
    assert refused.value.retry_after == pytest.approx(0.25)
    assert clock.sleeps == []
    # And the refused request took no slot: the next one still waits only 0.25 s
    limiter.acquire(max_wait=1.0)
    assert clock.sleeps == pytest.approx([0.25])


async def test_async_acquires_await_their_slots_and_share_them_with_sync_ones(
    make_limiter: MakeLimiter,
) -> None:
    # Given a limiter of one request per 0.25 s whose waits are recorded, not slept
    clock = FakeTime()
    sleeps: list[float] = []
    async_sleeps: list[float] = []

    async def async_sleep(seconds: float) -> None:
        async_sleeps.append(seconds)

    limiter = make_limiter(0.25, clock=clock, sleep=sleeps.append, async_sleep=async_sleep)
    # When a sync request and two async ones acquire at the same instant
    limiter.acquire(max_wait=1.0)
    await limiter.acquire_async(max_wait=1.0)
    await limiter.acquire_async(max_wait=1.0)
    # Then the async ones awaited their slots, 0.25 s and 0.5 s away, and nothing slept
    assert async_sleeps == pytest.approx([0.25, 0.5])
    assert sleeps == []
    # And beyond max_wait an async request is told to retry later, as a sync one is
    with pytest.raises(RetryLater) as refused:
        await limiter.acquire_async(max_wait=0.1)
    assert refused.value.retry_after == pytest.approx(0.75)


def test_a_slot_exactly_max_wait_away_is_reserved(make_limiter: MakeLimiter) -> None:
    # Given a limiter whose next slot is 0.25 s away
    clock = FakeTime()
    limiter = make_limiter(0.25, clock=clock, sleep=clock.sleep)
    limiter.acquire(max_wait=0.0)
    # When a request will wait exactly that long
    limiter.acquire(max_wait=0.25)
    # Then it gets the slot
    assert clock.sleeps == pytest.approx([0.25])


def test_an_idle_limiter_lets_the_next_request_go_at_once(make_limiter: MakeLimiter) -> None:
    # Given a limiter used once, then idle for longer than its interval
    clock = FakeTime()
    limiter = make_limiter(0.25, clock=clock, sleep=clock.sleep)
    limiter.acquire(max_wait=0.0)
    clock.now += 0.3
    # When the next request acquires, even with no wait allowed
    limiter.acquire(max_wait=0.0)
    # Then it goes at once: idle time is not saved up, but it is not owed either
    assert clock.sleeps == []


@pytest.mark.parametrize("min_interval", [0, -1.0])
def test_a_limiter_needs_a_positive_interval(
    make_limiter: MakeLimiter, min_interval: float
) -> None:
    with pytest.raises(ConfigurationError):
        make_limiter(min_interval)


def test_a_negative_max_wait_is_refused(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(0.25)
    with pytest.raises(ConfigurationError):
        limiter.acquire(max_wait=-1.0)


# -- Redis specifics -----------------------------------------------------------------------------


def test_the_redis_key_expires_once_its_last_slot_has_passed(redis_client: redis.Redis) -> None:
    # Given a Redis limiter of one request per 0.25 s
    limiter = RedisRateLimiter(redis_client, KEY, 0.25)
    # When a request acquires a slot
    limiter.acquire(max_wait=1.0)
    # Then the key lives no longer than until the next slot
    assert 0 < redis_client.pttl(KEY) <= 250


def test_an_unreachable_redis_defers_the_request(redis_client: redis.Redis) -> None:
    # Given a limiter whose Redis does not listen
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = redis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    limiter = RedisRateLimiter(client, KEY, 0.25, service="musicbrainz-api")
    # When a request acquires a slot
    with pytest.raises(RetryLater) as refused:
        limiter.acquire(max_wait=1.0)
    # Then it is deferred (the limiter fails closed), not sent unlimited
    assert refused.value.reason == UNREACHABLE_REASON
    assert refused.value.retry_after == UNREACHABLE_RETRY_AFTER
    client.close()


# -- real time, threads of one process -------------------------------------------------------------


def test_threads_of_one_process_acquire_slots_min_interval_apart(
    make_limiter: MakeLimiter,
) -> None:
    # Given one limiter shared by three threads
    limiter = make_limiter(INTERVAL)
    start = threading.Barrier(3)
    times: list[float] = []

    def work() -> None:
        start.wait(CHILD_TIMEOUT)
        for _ in range(2):
            limiter.acquire(max_wait=10.0)
            times.append(time.monotonic())

    # When they all acquire twice, starting together
    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CHILD_TIMEOUT)
    # Then the six acquisitions are INTERVAL apart
    assert len(times) == 6
    assert min(_gaps(times)) >= INTERVAL - READING_SLACK


# -- real time, several processes ------------------------------------------------------------------


def _child(redis_url: str, max_wait: float, barrier: Any, results: Any, rounds: int) -> None:
    """Run ``THREADS`` threads that acquire ``rounds`` times each; report what happened.

    Each acquisition is timed by the Redis server (TIME right after ``acquire`` returns), so
    the times of all processes are on one clock; refusals report their ``retry_after``.
    """
    client = redis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(client, KEY, INTERVAL, service="musicbrainz-api")
    report: dict[str, list[Any]] = {"times": [], "refusals": [], "errors": []}

    def work() -> None:
        try:
            barrier.wait(CHILD_TIMEOUT)
            for _ in range(rounds):
                try:
                    limiter.acquire(max_wait=max_wait)
                except RetryLater as exc:
                    report["refusals"].append(exc.retry_after)
                    continue
                seconds, microseconds = client.time()
                report["times"].append(seconds + microseconds / 1_000_000)
        except BaseException:
            report["errors"].append(traceback.format_exc())
            barrier.abort()

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    results.put(report)


def _run_cluster(redis_url: str, *, max_wait: float, rounds: int) -> dict[str, list[Any]]:
    """Run ``PROCESSES`` spawned children against one key; their merged reports."""
    barrier = SPAWN.Barrier(PROCESSES * THREADS)
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(
            target=_child, args=(redis_url, max_wait, barrier, results, rounds), daemon=True
        )
        for _ in range(PROCESSES)
    ]
    merged: dict[str, list[Any]] = {"times": [], "refusals": [], "errors": []}
    try:
        for process in processes:
            process.start()
        for _ in processes:
            try:
                report = results.get(timeout=CHILD_TIMEOUT)
            except queue.Empty:
                raise AssertionError("a child process sent no report in time") from None
            for name, values in report.items():
                merged[name].extend(values)
    finally:
        barrier.abort()
        for process in processes:
            process.join(CHILD_TIMEOUT)
            if process.is_alive():
                process.terminate()
                process.join()
        results.close()
        results.join_thread()
    assert not merged["errors"], "a worker failed:\n" + "\n".join(merged["errors"])
    return merged


def test_workers_of_several_processes_acquire_slots_min_interval_apart(redis_url: str) -> None:
    # Given two worker processes of three threads each, sharing one Redis limiter
    # When every thread acquires twice, all starting together, waiting as long as it takes
    report = _run_cluster(redis_url, max_wait=10.0, rounds=2)
    # Then all twelve acquisitions happened, INTERVAL apart on the Redis server's clock
    times = report["times"]
    assert len(times) == PROCESSES * THREADS * 2
    assert report["refusals"] == []
    assert min(_gaps(times)) >= INTERVAL - READING_SLACK
    assert max(times) - min(times) >= (len(times) - 1) * INTERVAL - READING_SLACK


def test_workers_beyond_their_max_wait_are_told_to_retry_later(redis_url: str) -> None:
    # Given six threads in two processes, each willing to wait at most 2.5 intervals
    max_wait = 2.5 * INTERVAL
    # When they all acquire once, starting together
    report = _run_cluster(redis_url, max_wait=max_wait, rounds=1)
    # Then three got the slots within reach (now, +1 and +2 intervals)
    assert len(report["times"]) == 3
    assert min(_gaps(report["times"])) >= INTERVAL - READING_SLACK
    # And the other three were refused, told to come back when the fourth slot is free
    refusals = report["refusals"]
    assert len(refusals) == 3
    assert all(max_wait < retry_after <= 3 * INTERVAL for retry_after in refusals)
