"""The index of deferred jobs: which messages wait for a breaker, why, and until when.

The middleware records a message when it defers it and removes it when the message runs or is
dead-lettered, so the index holds exactly the messages deferred and not yet run. Entries live in
one Redis hash per service (``<prefix>:deferred:<service>``, message id -> JSON), so counting a
service's backlog is one HLEN.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import redis

#: Default prefix of the index's keys.
DEFAULT_PREFIX = "soulspot:deferred"


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
        """Record (or update) a deferred message."""

    @abstractmethod
    def remove(self, service: str, message_id: str) -> None:
        """Forget a message: it ran, or was dead-lettered."""

    @abstractmethod
    def jobs(self, service: str | None = None) -> list[DeferredJob]:
        """Deferred messages (of ``service``, or of every service), earliest eta first."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Deferred messages per service."""


class MemoryDeferredIndex(DeferredIndex):
    """A process-local index, for brokers and tests without Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, DeferredJob]] = {}

    def add(self, job: DeferredJob) -> None:
        with self._lock:
            self._jobs.setdefault(job.service, {})[job.message_id] = job

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


class RedisDeferredIndex(DeferredIndex):
    """The index in Redis, shared by every worker: one hash per service plus a set of services."""

    def __init__(self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._services_key = f"{prefix}:services"

    def key(self, service: str) -> str:
        return f"{self.prefix}:{service}"

    def add(self, job: DeferredJob) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(self._services_key, job.service)
        pipe.hset(self.key(job.service), job.message_id, json.dumps(asdict(job)))
        pipe.execute()

    def remove(self, service: str, message_id: str) -> None:
        self.client.hdel(self.key(service), message_id)

    def jobs(self, service: str | None = None) -> list[DeferredJob]:
        found = []
        for name in [service] if service else self._services():
            for raw in self.client.hvals(self.key(name)):
                found.append(DeferredJob(**json.loads(raw)))
        return sorted(found, key=lambda job: job.eta)

    def counts(self) -> dict[str, int]:
        services = self._services()
        pipe = self.client.pipeline(transaction=False)
        for service in services:
            pipe.hlen(self.key(service))
        return {s: n for s, n in zip(services, pipe.execute(), strict=True) if n}

    def _services(self) -> list[str]:
        return sorted(
            m.decode() if isinstance(m, bytes) else m
            for m in self.client.smembers(self._services_key)
        )
