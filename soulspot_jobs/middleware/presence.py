"""``WorkerPresence``: each worker process says in Redis that it is alive, for the operators.

Every worker process (Redis or RabbitMQ broker alike) keeps one field in the hash
``<prefix>:workers``: its host, pid, queues, threads, start time and the last time it was seen,
rewritten every :data:`BEAT` seconds and removed when the worker stops. A process killed with
``kill -9`` leaves its field behind; :func:`live_workers` shows only the fields seen within
:data:`GONE_AFTER` seconds, and every beat removes the fields older than that, so the hash holds
about as many fields as there are live workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import Middleware

from soulspot_jobs.middleware.periodic import Periodic

#: Seconds between two beats of one worker process.
BEAT = 5.0
#: Seconds without a beat after which a worker process counts as gone.
GONE_AFTER = 3 * BEAT


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker process as it last described itself."""

    id: str
    host: str
    pid: int
    #: The queues it consumes (``[]``: every declared queue).
    queues: list[str]
    threads: int
    #: Epoch seconds.
    started_at: float
    seen_at: float


class WorkerPresence(Middleware):
    """Keeps this process's :class:`WorkerInfo` in the hash ``key`` while its worker runs."""

    def __init__(self, client: redis.Redis, *, key: str, beat: float = BEAT) -> None:
        self.client = client
        self.key = key
        self.beat = beat
        self._info: WorkerInfo | None = None
        self._thread: Periodic | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        now = time.time()
        self._info = WorkerInfo(
            id=uuid.uuid4().hex[:12],
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=sorted(getattr(worker, "queues", None) or ()),
            threads=getattr(worker, "worker_threads", 0),
            started_at=now,
            seen_at=now,
        )
        with contextlib.suppress(redis.RedisError):  # the thread says so, and tries again
            self.step(False)
        self._thread = Periodic("soulspot-presence", self.beat, self.step)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._thread is not None:
            self._thread.stop(self.beat)
            self._thread = None
        if self._info is not None:
            with contextlib.suppress(redis.RedisError):  # shown as gone after GONE_AFTER
                self.client.hdel(self.key, self._info.id)
            self._info = None

    def step(self, previous_failed: bool) -> None:
        """One beat: write this process's field, drop the fields of processes long gone."""
        info = self._info
        if info is None:
            return
        now = time.time()
        entry = json.dumps({**asdict(info), "seen_at": now})
        entries = dict(self.client.hscan_iter(self.key))
        stale = [field for field, _ in _entries(entries, now, gone=True)]
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key, info.id, entry)
        if stale:
            pipe.hdel(self.key, *stale)
        pipe.execute()


def live_workers(client: redis.Redis, key: str) -> list[WorkerInfo]:
    """The worker processes seen within :data:`GONE_AFTER` seconds, by host and pid."""
    now = time.time()
    workers = [info for _, info in _entries(client.hgetall(key), now, gone=False)]
    return sorted(workers, key=lambda info: (info.host, info.pid))


def _entries(raw: dict[Any, Any], now: float, *, gone: bool) -> list[tuple[Any, WorkerInfo]]:
    """The fields of ``raw`` whose worker is gone (``gone``) or alive, with their info; a field
    that cannot be read counts as gone."""
    found = []
    for field, value in raw.items():
        try:
            info = WorkerInfo(**json.loads(value))
            alive = now - info.seen_at <= GONE_AFTER
        except (TypeError, ValueError):
            if gone:
                found.append((field, None))
            continue
        if alive != gone:
            found.append((field, info))
    return found
