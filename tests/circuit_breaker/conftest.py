"""Fixtures of the circuit-breaker tests: a clock the test moves, and both backends on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from soulspot_jobs.circuit_breaker import (
    Backend,
    CircuitBreaker,
    CircuitBreakerConfig,
    MemoryBackend,
    RedisBackend,
)

#: Seconds between refreshes of the Redis backend's local view in tests (kept short).
REFRESH_INTERVAL = 0.05


class FakeClock:
    """Epoch seconds that move only when the test calls :meth:`advance`.

    Both backends read time through it (the Redis backend passes its value to the Lua scripts
    instead of the server's TIME), so one ``advance`` moves every breaker at once.
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at 1,000,000 s since the epoch."""
    return FakeClock()


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
def backend(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[Backend]:
    """Each behavioural test runs once per backend, both driven by ``clock``; closed afterwards."""
    if request.param == "memory":
        built: Backend = MemoryBackend(clock=clock)
    else:
        client: redis.Redis = request.getfixturevalue("redis_client")
        built = RedisBackend(client, clock=clock, refresh_interval=REFRESH_INTERVAL)
    yield built
    built.close()


@pytest.fixture
def make_breaker(backend: Backend) -> Callable[..., CircuitBreaker]:
    """Build ``CircuitBreaker(name, CircuitBreakerConfig(**fields), backend=backend)``."""

    def make(name: str = "svc", **config_fields: object) -> CircuitBreaker:
        return CircuitBreaker(name, CircuitBreakerConfig(**config_fields), backend=backend)

    return make
