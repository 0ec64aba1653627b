"""``build_broker``: where the breaker middleware sits and what it shares with the broker."""

from __future__ import annotations

import pytest
from dramatiq.brokers.redis import RedisBroker

from soulspot_jobs.broker import build_broker
from soulspot_jobs.circuit_breaker import RedisBackend
from soulspot_jobs.deferred import RedisDeferredIndex
from soulspot_jobs.errors import ConfigurationError
from soulspot_jobs.middleware import CircuitBreakerMiddleware
from soulspot_jobs.settings import load_settings

#: The documented order: AgeLimit first (an expired message takes no trial slot), the breaker
#: before Retries (a deferral consumes no retry), AsyncIO last; Recovery before all (it notes
#: each message before any middleware may enqueue on its behalf).
EXPECTED_ORDER = [
    "Recovery",
    "AgeLimit",
    "TimeLimit",
    "ShutdownNotifications",
    "Callbacks",
    "Pipelines",
    "Retries",
    "CircuitBreakerMiddleware",
    "DaemonAsyncIO",
    "ExitGuard",
]


def _names(broker: RedisBroker) -> list[str]:
    return [type(middleware).__name__ for middleware in broker.middleware]


def _breaker_middleware(broker: RedisBroker) -> CircuitBreakerMiddleware:
    (middleware,) = [m for m in broker.middleware if isinstance(m, CircuitBreakerMiddleware)]
    return middleware


def test_the_breaker_sits_after_retries_so_it_judges_outcomes_first(redis_url: str) -> None:
    # Given settings naming a Redis server
    settings = load_settings(REDIS_URL=redis_url)
    # When a broker is built from them
    broker = build_broker(settings)
    try:
        # Then the middleware run in the documented order
        assert _names(broker) == EXPECTED_ORDER
    finally:
        broker.close()


def test_prometheus_when_enabled_comes_first_so_it_sees_deferrals_as_skips(
    redis_url: str,
) -> None:
    # Given settings naming a Redis server
    settings = load_settings(REDIS_URL=redis_url)
    # When a broker is built with Prometheus enabled
    broker = build_broker(settings, prometheus=True)
    try:
        # Then Prometheus precedes everything else, the rest keeps its order
        assert _names(broker) == ["DramatiqPrometheus", *EXPECTED_ORDER]
    finally:
        broker.close()


def test_queues_and_breakers_live_in_the_same_redis_under_the_key_prefix(redis_url: str) -> None:
    # Given settings with a key prefix
    settings = load_settings(REDIS_URL=redis_url, SOULSPOT_KEY_PREFIX="acme")
    # When a broker is built without an explicit backend
    broker = build_broker(settings, max_deferral=5_000)
    try:
        middleware = _breaker_middleware(broker)
        # Then the queues, the breakers and the deferred index share the broker's client,
        # each under its own part of the prefix, and middleware options are passed on
        assert broker.namespace == "acme:dramatiq"
        assert isinstance(middleware.backend, RedisBackend)
        assert middleware.backend.client is broker.client
        assert middleware.backend.prefix == "acme:breaker"
        assert isinstance(middleware.index, RedisDeferredIndex)
        assert middleware.index.prefix == "acme:deferred"
        assert middleware.max_deferral == 5_000
    finally:
        middleware.backend.close()
        broker.close()


def test_an_explicit_url_and_backend_are_used_as_given(redis_url: str) -> None:
    # Given settings without a Redis URL and a backend of our own
    settings = load_settings(REDIS_URL=None)
    backend = RedisBackend.from_url(redis_url, prefix="mine")
    try:
        # When the broker is built on an explicit URL with that backend
        broker = build_broker(settings, url=redis_url, backend=backend)
        try:
            # Then the middleware uses that backend
            assert _breaker_middleware(broker).backend is backend
        finally:
            broker.close()
    finally:
        backend.close()
        backend.client.close()


def test_a_broker_without_any_redis_url_is_a_configuration_error() -> None:
    # Given settings without a Redis URL / When a broker is built without a URL
    # Then the error says what is missing
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        build_broker(load_settings(REDIS_URL=None))
