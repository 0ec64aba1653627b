"""``build_broker``: a Dramatiq broker with the circuit-breaker middleware in its place.

Messages go to Redis (``redis://``, ``rediss://``, ``unix://``) or to RabbitMQ (``amqp://``,
``amqps://``, with the ``rabbitmq`` extra); the breakers, the deferred index, the job records and
the MusicBrainz limiter always live in Redis (``REDIS_URL``).
"""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.middleware import AgeLimit

from soulspot_jobs.circuit_breaker import Backend, RedisBackend
from soulspot_jobs.errors import ConfigurationError
from soulspot_jobs.middleware import CircuitBreakerMiddleware
from soulspot_jobs.recovery import RecoveringRedisBroker, Recovery
from soulspot_jobs.settings import Settings, load_settings
from soulspot_jobs.shutdown import DaemonAsyncIO, ExitGuard


def build_broker(
    settings: Settings | None = None,
    *,
    url: str | None = None,
    backend: Backend | None = None,
    prometheus: bool = False,
    **middleware_options: object,
) -> SoulspotRedisBroker | SoulspotRabbitmqBroker:
    """A broker on ``url`` (default ``BROKER_URL``, else ``REDIS_URL``) with breakers in Redis.

    A ``redis://`` URL gives a RedisBroker whose breakers live in the same Redis; an
    ``amqp://`` URL a RabbitmqBroker whose breakers, deferred index and job records live in
    ``REDIS_URL`` (its ``redis`` attribute is that client, closed with the broker).

    Middleware order: (Prometheus,) Recovery, AgeLimit, TimeLimit, ShutdownNotifications,
    Callbacks, Pipelines, Retries, **CircuitBreaker**, AsyncIO (its event loop in a daemon
    thread) and ExitGuard (both in :mod:`soulspot_jobs.shutdown`). Recovery only takes notes:
    it goes first so that it notes each message before any other middleware may enqueue on its
    behalf, and forgets it after the last one did. AgeLimit comes next so an expired message is
    dead-lettered without taking a trial slot; the breaker comes after Retries, so that its
    ``after_process_message`` runs first (Dramatiq calls ``after_*`` hooks in reverse order) and
    a deferred message is never retried as well. Closing the broker closes the middleware (its
    deferred-index writer and, for a backend built here, the breakers' view watcher).
    ``prometheus=True`` adds Dramatiq's Prometheus middleware, fixed so that deferrals are not
    counted as processed messages and no gauge goes negative
    (:mod:`soulspot_jobs.dramatiq_prometheus`); our own metrics are ``soulspot-jobs serve``'s
    ``/metrics``.

    The broker is a :class:`~soulspot_jobs.recovery.RecoveringRedisBroker` with the
    :class:`~soulspot_jobs.recovery.Recovery` middleware: a worker process silent for
    ``RECOVERY_HEARTBEAT_TIMEOUT`` is dead (Dramatiq's own ``heartbeat_timeout`` is set to the
    same) and its messages are requeued within ``RECOVERY_INTERVAL``; messages a live worker
    lost from memory are requeued too. A RabbitMQ broker has no Recovery: RabbitMQ itself
    redelivers the unacknowledged messages of a consumer whose connection died.
    """
    settings = settings if settings is not None else load_settings()
    url = url or settings.broker_url or settings.redis_url
    if url is None:
        raise ConfigurationError("REDIS_URL is not set: the broker needs a Redis server")
    recovery = settings.recovery
    broker: SoulspotRedisBroker | SoulspotRabbitmqBroker
    if url.startswith(AMQP_SCHEMES):
        if settings.redis_url is None:
            raise ConfigurationError(
                "REDIS_URL is not set: with a RabbitMQ BROKER_URL the breakers, the deferred "
                "index and the job records still need a Redis server"
            )
        broker = _rabbitmq_broker(url, redis.Redis.from_url(settings.redis_url))
    else:
        broker = SoulspotRedisBroker(
            url=url,
            namespace=f"{settings.key_prefix}:dramatiq",
            heartbeat_timeout=int(recovery.heartbeat_timeout * 1000),
        )
    owns_backend = backend is None
    if backend is None:
        backend = RedisBackend(broker.redis, prefix=f"{settings.key_prefix}:breaker")
    middleware = CircuitBreakerMiddleware(
        backend=backend,
        settings=settings,
        owns_backend=owns_backend,
        **middleware_options,  # type: ignore[arg-type]
    )
    broker.add_middleware(middleware)
    broker.add_middleware(DaemonAsyncIO())
    broker.add_middleware(ExitGuard())
    first: type = AgeLimit
    if isinstance(broker, SoulspotRedisBroker):
        marker_key = f"{settings.key_prefix}:recovery:alive"
        broker.add_middleware(Recovery(recovery, marker_key=marker_key), before=AgeLimit)
        first = Recovery
    if prometheus:
        from soulspot_jobs.dramatiq_prometheus import DramatiqPrometheus

        broker.add_middleware(DramatiqPrometheus(), before=first)
    return broker


#: URL schemes that select Dramatiq's RabbitmqBroker.
AMQP_SCHEMES = ("amqp://", "amqps://")


def _close_middleware(broker: dramatiq.Broker) -> None:
    """Close the middleware that hold resources (the breaker middleware's writer and watcher)."""
    for middleware in broker.middleware:
        if isinstance(middleware, CircuitBreakerMiddleware):
            middleware.close()


class SoulspotRedisBroker(RecoveringRedisBroker):
    """A RedisBroker whose ``close`` first closes the middleware that hold resources.

    The circuit-breaker middleware owns a writer thread (the deferred index) and, when it built
    its backend, the breakers' view watcher: closing the broker stops them.
    """

    @property
    def redis(self) -> redis.Redis:
        """The Redis of the breakers, the deferred index and the job records: the broker's own."""
        return self.client

    def close(self) -> None:
        _close_middleware(self)
        super().close()


def _rabbitmq_broker(url: str, client: redis.Redis) -> SoulspotRabbitmqBroker:
    try:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
    except ImportError as exc:  # pika is missing
        raise ConfigurationError(
            f"BROKER_URL is a RabbitMQ URL but {exc.name} is not installed: "
            "pip install 'soulspot-jobs[rabbitmq]'"
        ) from None

    class _Broker(SoulspotRabbitmqBroker, RabbitmqBroker):
        pass

    return _Broker(url=url, redis_client=client)


class SoulspotRabbitmqBroker:
    """Mixed into Dramatiq's RabbitmqBroker: messages in RabbitMQ, breakers in Redis.

    ``redis`` is the client of ``REDIS_URL``; ``close`` closes the middleware that hold
    resources, then the broker, then that client.
    """

    def __init__(self, *, redis_client: redis.Redis, **options: object) -> None:
        super().__init__(**options)  # type: ignore[call-arg]
        self.redis = redis_client

    def close(self) -> None:
        _close_middleware(self)  # type: ignore[arg-type]
        try:
            super().close()  # type: ignore[misc]
        finally:
            self.redis.close()
