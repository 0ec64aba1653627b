"""The deferred-index fixture: each test runs on the in-memory index and on the Redis index."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from soulspot_jobs.deferral.index import (
    DeferredIndex,
    DeferredJob,
    MemoryDeferredIndex,
    RedisDeferredIndex,
)
from soulspot_jobs.keys import Keys

#: The key names of the Redis index in these tests.
KEYS = Keys("test")


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
def index(request: pytest.FixtureRequest) -> Iterator[DeferredIndex]:
    """Each test runs once on the in-memory index and once on the Redis index."""
    if request.param == "memory":
        yield MemoryDeferredIndex()
    else:
        client: redis.Redis = request.getfixturevalue("redis_client")
        built = RedisDeferredIndex(client, KEYS)
        yield built
        built.close()


def job(message_id: str, *, service: str = "slskd-api", eta: int = 1_000, **fields) -> DeferredJob:
    """A deferred-index entry with plausible fields."""
    values = {
        "actor": "download",
        "queue": "default",
        "deferrals": 1,
        "first_deferred_at": 500,
        "reason": "Circuit breaker slskd-api is OPEN, blocking request. Retry after 1.0 seconds.",
        **fields,
    }
    return DeferredJob(message_id=message_id, service=service, eta=eta, **values)
