"""``build_broker``: the middleware stack in its order, and what the broker carries and shares."""

from __future__ import annotations

from typing import Any

import pytest
from dramatiq.brokers.redis import RedisBroker

from soulspot_jobs.broker import build_broker
from soulspot_jobs.circuit_breaker import RedisBackend
from soulspot_jobs.deferral.index import RedisDeferredIndex
from soulspot_jobs.errors import ConfigurationError
from soulspot_jobs.middleware import CircuitBreakerMiddleware, DeferringRetries
from soulspot_jobs.settings import load_settings

#: The documented order: Dramatiq's defaults with Retries and Callbacks replaced by the
#: project's, the breaker right after the Retries it reports to (its ``after_*`` hooks run
#: first), AgeLimit before it (an expired message takes no trial slot), AsyncIO and the exit
#: guard last; Recovery before all (it notes each message before any middleware may enqueue on
#: its behalf).
EXPECTED_ORDER = [
    "Recovery",
    "WorkerPresence",
    "AgeLimit",
    "TimeLimit",
    "ShutdownNotifications",
    "DeferralAwareCallbacks",
    "Pipelines",
    "DeferringRetries",
    "CircuitBreakerMiddleware",
    "DeferredRelease",
    "DaemonAsyncIO",
    "ExitGuard",
]


def _names(broker: RedisBroker) -> list[str]:
    return [type(middleware).__name__ for middleware in broker.middleware]


def _middleware(broker: RedisBroker, kind: type) -> Any:
    (middleware,) = [m for m in broker.middleware if isinstance(m, kind)]
    return middleware


def test_the_stack_replaces_retries_and_callbacks_and_reports_before_retries_decide(
    redis_url: str,
) -> None:
    # Given settings naming a Redis server
    settings = load_settings(REDIS_URL=redis_url)
    # When a broker is built from them
    broker = build_broker(settings)
    try:
        # Then the middleware run in the documented order
        assert _names(broker) == EXPECTED_ORDER
    finally:
        broker.close()


def test_prometheus_when_enabled_comes_first(
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
        # Then the queues, the breakers and the deferred index share the broker's client,
        # each under its own part of the prefix, the middleware share the broker's one
        # registry of breakers, and options are passed on
        backend = broker.breakers.backend
        assert broker.namespace == "acme:dramatiq"
        assert isinstance(backend, RedisBackend)
        assert backend.client is broker.client
        assert backend.prefix == "acme:breaker"
        assert isinstance(broker.deferred, RedisDeferredIndex)
        assert broker.deferred.key("slskd-api") == "acme:deferred:slskd-api"
        assert _middleware(broker, CircuitBreakerMiddleware).breakers is broker.breakers
        retries = _middleware(broker, DeferringRetries)
        assert retries.deferrals.max_deferral == 5_000
        assert retries.deferrals.index is broker.deferred
    finally:
        broker.close()


def test_an_explicit_url_and_backend_are_used_as_given(redis_url: str) -> None:
    # Given settings without a Redis URL and a backend of our own
    settings = load_settings(REDIS_URL=None)
    backend = RedisBackend.from_url(redis_url, prefix="mine")
    try:
        # When the broker is built on an explicit URL with that backend
        broker = build_broker(settings, url=redis_url, backend=backend)
        try:
            # Then the breakers use that backend, and closing the broker leaves it open: it is
            # the caller's
            assert broker.breakers.backend is backend
            assert _middleware(broker, CircuitBreakerMiddleware).breakers.backend is backend
        finally:
            broker.close()
        assert backend.client.ping()
    finally:
        backend.close()
        backend.client.close()


def test_a_broker_without_any_redis_url_is_a_configuration_error() -> None:
    # Given settings without a Redis URL / When a broker is built without a URL
    # Then the error says what is missing
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        build_broker(load_settings(REDIS_URL=None))
