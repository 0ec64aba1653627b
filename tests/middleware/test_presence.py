"""WorkerPresence: a running worker process is listed in Redis, a stopped one is not, and a killed
one's entry disappears instead of piling up (real Workers on the test Redis)."""

from __future__ import annotations

import json
import os
import time

import dramatiq
import redis

from soulspot_jobs.broker import build_broker
from soulspot_jobs.keys import Keys
from soulspot_jobs.middleware.presence import GONE_AFTER, WorkerPresence, live_workers
from soulspot_jobs.settings import load_settings

KEY = Keys().workers


def presence_of(broker: dramatiq.Broker) -> WorkerPresence:
    (presence,) = [m for m in broker.middleware if isinstance(m, WorkerPresence)]
    return presence


def test_a_running_worker_is_listed_with_its_host_pid_queues_and_threads(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Given a broker from build_broker with one queue's actor
    broker = build_broker(load_settings(REDIS_URL=redis_url))
    dramatiq.actor(lambda: None, actor_name="noop", queue_name="jobs", broker=broker)

    # When a worker with 3 threads starts
    worker = dramatiq.Worker(broker, worker_threads=3, worker_timeout=50)
    worker.start()
    try:
        # Then it is listed at once, as this process
        (listed,) = live_workers(redis_client, KEY)
        assert (listed.pid, listed.threads) == (os.getpid(), 3)
        assert listed.queues == []  # every declared queue
        assert time.time() - listed.seen_at < GONE_AFTER
    finally:
        # And when it stops, it is not listed any more
        worker.stop()
        broker.close()
    assert live_workers(redis_client, KEY) == []
    assert redis_client.hlen(KEY) == 0


def test_a_killed_workers_entry_is_not_listed_and_is_removed_by_the_next_beat(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Given the entry a worker killed with kill -9 left behind, last seen long ago
    stale = {
        "id": "killed",
        "host": "elsewhere",
        "pid": 4242,
        "queues": [],
        "threads": 8,
        "started_at": time.time() - 3600,
        "seen_at": time.time() - GONE_AFTER - 1,
    }
    redis_client.hset(KEY, "killed", json.dumps(stale))
    redis_client.hset(KEY, "garbled", "not json")

    # Then it is not listed
    assert live_workers(redis_client, KEY) == []

    # When a live worker beats
    broker = build_broker(load_settings(REDIS_URL=redis_url))
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        presence_of(broker).step(False)

        # Then only the live worker is left in Redis
        assert redis_client.hlen(KEY) == 1
        (listed,) = live_workers(redis_client, KEY)
        assert listed.pid == os.getpid()
    finally:
        worker.stop()
        broker.close()
