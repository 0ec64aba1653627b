"""The index of deferred jobs: which messages wait for a breaker, why, and until when.

The middleware records a message when it defers it and removes it when the message runs or is
dead-lettered, so the index holds exactly the messages deferred and not yet run. Entries live in
one Redis hash per service (``Keys.deferred(service)``, message id -> JSON), so counting a
service's backlog is one HLEN. Each hash, and the set of services, expires ``KEY_TTL`` after the
last deferral written to it.

Writes cost no round trip of their own on the deferral path: the Redis index buffers them and a
background thread writes them every ``FLUSH_INTERVAL`` in one pipeline, in the order they were
made. An entry due within ``WRITE_AT_ONCE_BELOW`` is written at once (with everything buffered
before it), because its message could run, and remove it, before a buffered write landed.

Every :meth:`DeferredIndex.add` is one deferral: the index also counts deferrals per service,
for ever (``Keys.deferral_totals``, service -> count), so that metrics can show deferrals
as deferrals, summed over every worker process.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import weakref
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import redis

from soulspot_jobs.keys import Keys

#: Seconds between two writes of buffered index changes.
FLUSH_INTERVAL = 0.05
#: Entries whose message is due within this many milliseconds are written at once.
WRITE_AT_ONCE_BELOW = 1000
#: Buffered changes beyond which the caller writes them itself (Redis is slow or away).
MAX_BUFFERED = 10_000
#: Milliseconds the index's keys live after their last deferral: Dramatiq's longest delay
#: (7 days) plus a day. Entries are removed when their message runs; the expiry only reclaims
#: entries whose message vanished (a Redis restart without persistence, a purged queue).
KEY_TTL = (7 + 1) * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class DeferredJob:
    """One deferred message, as the index shows it."""

    message_id: str
    actor: str
    queue: str
    #: The breaker that deferred it (``slskd-api``...).
    service: str
    #: Epoch milliseconds at which the message is due again.
    eta: int
    #: Times this message has been deferred so far.
    deferrals: int
    #: Epoch milliseconds of its first deferral.
    first_deferred_at: int
    #: Why it was last deferred (the breaker's refusal).
    reason: str


class DeferredIndex(ABC):
    """Where the middleware records deferred messages."""

    @abstractmethod
    def add(self, job: DeferredJob) -> None:
        """Record (or update) a deferred message, and count one deferral of its service."""

    @abstractmethod
    def remove(self, service: str, message_id: str) -> None:
        """Forget a message: it ran, or was dead-lettered."""

    @abstractmethod
    def jobs(self, service: str | None = None) -> list[DeferredJob]:
        """Deferred messages (of ``service``, or of every service), earliest eta first."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Deferred messages per service."""

    @abstractmethod
    def deferral_totals(self) -> dict[str, int]:
        """Deferrals ever counted per service (a message deferred twice counts twice)."""

    def flush(self) -> None:  # noqa: B027 - only buffering indexes have anything to write
        """Write every buffered change now."""

    def close(self) -> None:
        """Write what is buffered and release background resources."""
        self.flush()


class MemoryDeferredIndex(DeferredIndex):
    """A process-local index, for brokers and tests without Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, DeferredJob]] = {}
        self._totals: dict[str, int] = {}

    def add(self, job: DeferredJob) -> None:
        with self._lock:
            self._jobs.setdefault(job.service, {})[job.message_id] = job
            self._totals[job.service] = self._totals.get(job.service, 0) + 1

    def remove(self, service: str, message_id: str) -> None:
        with self._lock:
            self._jobs.get(service, {}).pop(message_id, None)

    def jobs(self, service: str | None = None) -> list[DeferredJob]:
        with self._lock:
            services = [service] if service else list(self._jobs)
            found = [job for name in services for job in self._jobs.get(name, {}).values()]
        return sorted(found, key=lambda job: job.eta)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {service: len(jobs) for service, jobs in self._jobs.items() if jobs}

    def deferral_totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)


class RedisDeferredIndex(DeferredIndex):
    """The index in Redis, shared by every worker: one hash per service plus a set of services."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys | None = None,
        *,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.flush_interval = flush_interval
        self._services_key = self.keys.deferred_services
        self._totals_key = self.keys.deferral_totals
        self._reset_buffer()
        _forget_buffer_after_fork(self)

    def key(self, service: str) -> str:
        return self.keys.deferred(service)

    def add(self, job: DeferredJob) -> None:
        change = ("add", job.service, job.message_id, json.dumps(asdict(job)))
        due_soon = job.eta - time.time() * 1000 < WRITE_AT_ONCE_BELOW
        self._buffer(change, write_now=due_soon)

    def remove(self, service: str, message_id: str) -> None:
        self._buffer(("remove", service, message_id, ""), write_now=False)

    def jobs(self, service: str | None = None) -> list[DeferredJob]:
        self.flush()
        found = []
        for name in [service] if service else self._services():
            for raw in self.client.hvals(self.key(name)):
                found.append(DeferredJob(**json.loads(raw)))
        return sorted(found, key=lambda job: job.eta)

    def counts(self) -> dict[str, int]:
        self.flush()
        services = self._services()
        pipe = self.client.pipeline(transaction=False)
        for service in services:
            pipe.hlen(self.key(service))
        return {s: n for s, n in zip(services, pipe.execute(), strict=True) if n}

    def deferral_totals(self) -> dict[str, int]:
        self.flush()
        raw = self.client.hgetall(self._totals_key)
        return {_text(service): int(count) for service, count in raw.items()}

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                changes, self._pending = self._pending, []
            if not changes:
                return
            pipe = self.client.pipeline(transaction=False)
            for action, service, message_id, entry in changes:
                if action == "add":
                    pipe.sadd(self._services_key, service)
                    pipe.hset(self.key(service), message_id, entry)
                    pipe.hincrby(self._totals_key, service, 1)
                    pipe.pexpire(self._services_key, KEY_TTL)
                    pipe.pexpire(self.key(service), KEY_TTL)
                else:
                    pipe.hdel(self.key(service), message_id)
            try:
                pipe.execute()
            except redis.RedisError:
                with self._lock:
                    self._pending[:0] = changes  # kept, in order, for the next attempt
                raise

    def close(self) -> None:
        """Stop the background writer and write what is buffered."""
        self._stopping.set()
        if self._writer is not None:
            self._writer.join(self.flush_interval * 10)
            self._writer = None
        self.flush()

    def _buffer(self, change: tuple[str, str, str, str], *, write_now: bool) -> None:
        with self._lock:
            self._pending.append(change)
            overflowing = len(self._pending) > MAX_BUFFERED
            if self._writer is None and not write_now:
                self._writer = threading.Thread(
                    target=_write_periodically,
                    args=(weakref.ref(self), self.flush_interval, self._stopping),
                    name="soulspot-deferred-index",
                    daemon=True,
                )
                self._writer.start()
        if write_now or overflowing:
            self.flush()

    def _reset_buffer(self) -> None:
        self._lock = threading.Lock()
        #: Serialises flushes, so that changes reach Redis in the order they were made.
        self._write_lock = threading.Lock()
        self._pending: list[tuple[str, str, str, str]] = []
        self._stopping = threading.Event()
        self._writer: threading.Thread | None = None

    def _services(self) -> list[str]:
        return sorted(_text(m) for m in self.client.smembers(self._services_key))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _write_periodically(
    index_ref: weakref.ref[RedisDeferredIndex], interval: float, stopping: threading.Event
) -> None:
    """The background writer: flush every ``interval`` until stopped or the index is gone."""
    while not stopping.wait(interval):
        index = index_ref()
        if index is None:
            return
        with contextlib.suppress(redis.RedisError):  # kept in the buffer for the next attempt
            index.flush()
        del index


def _forget_buffer_after_fork(index: RedisDeferredIndex) -> None:
    """A forked child has no writer thread, and the parent's buffered changes are not its own."""
    ref = weakref.ref(index)

    def after_fork_in_child() -> None:
        alive = ref()
        if alive is not None:
            alive._reset_buffer()

    os.register_at_fork(after_in_child=after_fork_in_child)
