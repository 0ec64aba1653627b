"""``build_broker``: a Dramatiq broker with the circuit-breaker middleware in its place."""

from __future__ import annotations

from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit, AsyncIO, TimeLimit

from soulspot_jobs.circuit_breaker import Backend, RedisBackend
from soulspot_jobs.errors import ConfigurationError
from soulspot_jobs.middleware import CircuitBreakerMiddleware
from soulspot_jobs.settings import Settings, load_settings


def build_broker(
    settings: Settings | None = None,
    *,
    url: str | None = None,
    backend: Backend | None = None,
    prometheus: bool = False,
    **middleware_options: object,
) -> RedisBroker:
    """A Redis broker on ``url`` (default ``REDIS_URL``) whose breakers live in the same Redis.

    Middleware order: (Prometheus,) AgeLimit, TimeLimit, CircuitBreaker, ShutdownNotifications,
    Callbacks, Pipelines, Retries, AsyncIO. AgeLimit comes first so an expired message is
    dead-lettered without taking a trial slot; the breaker comes before Retries, so a deferral
    never consumes a retry; Prometheus, when enabled, sees deferrals as skipped messages.
    """
    settings = settings if settings is not None else load_settings()
    url = url or settings.redis_url
    if url is None:
        raise ConfigurationError("REDIS_URL is not set: the broker needs a Redis server")
    broker = RedisBroker(url=url, namespace=f"{settings.key_prefix}:dramatiq")
    if backend is None:
        backend = RedisBackend(broker.client, prefix=f"{settings.key_prefix}:breaker")
    middleware = CircuitBreakerMiddleware(
        backend=backend,
        settings=settings,
        **middleware_options,  # type: ignore[arg-type]
    )
    broker.add_middleware(middleware, after=TimeLimit)
    broker.add_middleware(AsyncIO())
    if prometheus:
        from dramatiq.middleware.prometheus import Prometheus

        broker.add_middleware(Prometheus(), before=AgeLimit)
    return broker
