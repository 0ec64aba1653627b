"""``build_broker``: a Dramatiq broker with the project's middleware stack in its place.

Messages go to Redis (``redis://``, ``rediss://``, ``unix://``) or to RabbitMQ (``amqp://``,
``amqps://``, with the ``rabbitmq`` extra); the breakers, the deferred index, the dead-letter
reasons, the job records and the MusicBrainz limiter always live in Redis (``REDIS_URL``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import dramatiq
import redis

from soulspot_jobs.broker.redis import RecoveringRedisBroker
from soulspot_jobs.broker.signals import HandledSignals
from soulspot_jobs.circuit_breaker import Backend, Breakers, CircuitBreaker, RedisBackend
from soulspot_jobs.deferral.deferrals import (
    DEFAULT_JITTER_RATIO,
    DEFAULT_MAX_DEFERRAL,
    DEFAULT_MAX_JITTER,
    Deferrals,
)
from soulspot_jobs.deferral.index import DeferredIndex, DeferredJob, RedisDeferredIndex
from soulspot_jobs.deferral.reasons import DeadLetterReasons
from soulspot_jobs.errors import ConfigurationError, is_service_failure
from soulspot_jobs.keys import Keys
from soulspot_jobs.middleware.presence import WorkerPresence
from soulspot_jobs.middleware.recovery import Recovery
from soulspot_jobs.middleware.retries import DeferringRetries
from soulspot_jobs.middleware.stack import middleware_stack
from soulspot_jobs.settings import SERVICES, Settings, load_settings

#: URL schemes that select Dramatiq's RabbitmqBroker.
AMQP_SCHEMES = ("amqp://", "amqps://")


def build_broker(
    settings: Settings | None = None,
    *,
    url: str | None = None,
    backend: Backend | None = None,
    breakers: Mapping[str, CircuitBreaker] | None = None,
    is_failure: Callable[[BaseException], bool] = is_service_failure,
    index: DeferredIndex | None = None,
    on_defer: Callable[[Any, DeferredJob], None] | None = None,
    on_dead_letter: Callable[[Any, str], None] | None = None,
    max_deferral: int = DEFAULT_MAX_DEFERRAL,
    jitter_ratio: float = DEFAULT_JITTER_RATIO,
    max_jitter: float = DEFAULT_MAX_JITTER,
    prometheus: bool = False,
) -> SoulspotRedisBroker | SoulspotRabbitmqBroker:
    """A broker on ``url`` (default ``BROKER_URL``, else ``REDIS_URL``) with breakers in Redis.

    A ``redis://`` URL gives a :class:`SoulspotRedisBroker` whose breakers live in the same
    Redis; an ``amqp://`` URL a RabbitmqBroker whose breakers, deferred index and job records
    live in ``REDIS_URL``. Its middleware is :func:`~soulspot_jobs.middleware.middleware_stack`,
    with :class:`~soulspot_jobs.middleware.recovery.Recovery` first on Redis (a worker process
    silent for ``RECOVERY_HEARTBEAT_TIMEOUT`` is dead and its messages are requeued within
    ``RECOVERY_INTERVAL``; RabbitMQ redelivers a dead consumer's messages itself), and Dramatiq's
    Prometheus middleware before everything when ``prometheus`` (fixed so that deferrals are not
    counted as processed messages; our own metrics are ``soulspot-jobs serve``'s ``/metrics``).

    The broker carries what every part of a deployment shares: ``keys``, ``breakers`` (one
    :class:`~soulspot_jobs.circuit_breaker.CircuitBreaker` per service, on ``backend``, classifying
    with ``is_failure``; ``breakers`` gives ready-made ones), ``deferred`` (the deferred index)
    and ``dead_letter_reasons``. Closing the broker closes what it built: the deferred index's
    writer and, unless ``backend`` was passed in, the breakers' backend (its view watcher). A
    backend passed in is the caller's: close it after the broker.
    """
    settings = settings if settings is not None else load_settings()
    url = url or settings.broker_url or settings.redis_url
    if url is None:
        raise ConfigurationError("REDIS_URL is not set: the broker needs a Redis server")
    keys = Keys(settings.key_prefix)
    recovery = settings.recovery
    first: list[dramatiq.Middleware] = []
    if prometheus:
        from soulspot_jobs.middleware.prometheus import DramatiqPrometheus

        first.append(DramatiqPrometheus())
    broker: SoulspotRedisBroker | SoulspotRabbitmqBroker
    if url.startswith(AMQP_SCHEMES):
        if settings.redis_url is None:
            raise ConfigurationError(
                "REDIS_URL is not set: with a RabbitMQ BROKER_URL the breakers, the deferred "
                "index and the job records still need a Redis server"
            )
        client = redis.Redis.from_url(settings.redis_url)
        broker = _rabbitmq_broker(url, client)
    else:
        broker = SoulspotRedisBroker(
            url=url,
            namespace=keys.dramatiq,
            heartbeat_timeout=int(recovery.heartbeat_timeout * 1000),
            middleware=[],
        )
        client = broker.client
        first.append(Recovery(recovery, marker_key=keys.recovery_marker))
    first.append(WorkerPresence(client, key=keys.workers))
    owns_backend = backend is None
    if backend is None:
        backend = RedisBackend(client, prefix=keys.breakers)
    broker.keys = keys
    broker.breakers = Breakers(
        backend,
        config_for=settings.observability.circuit_breaker.config_for,
        is_failure=is_failure,
        services=tuple(SERVICES),
        breakers=breakers,
        owns_backend=owns_backend,
    )
    broker.deferred = index if index is not None else RedisDeferredIndex(client, keys)
    broker.dead_letter_reasons = DeadLetterReasons(client, keys)
    deferrals = Deferrals(
        broker.deferred,
        on_defer=on_defer,
        max_deferral=max_deferral,
        jitter_ratio=jitter_ratio,
        max_jitter=max_jitter,
    )
    stack = middleware_stack(
        broker.breakers,
        deferrals,
        reasons=broker.dead_letter_reasons,
        on_dead_letter=on_dead_letter,
        first=tuple(first),
    )
    for middleware in stack:
        broker.add_middleware(middleware)
    return broker


class _Shared(HandledSignals):
    """What a soulspot-jobs broker carries besides its messages (set by :func:`build_broker`);
    it emits each signal only to the middleware that handle it (:mod:`.signals`)."""

    keys: Keys
    breakers: Breakers
    deferred: DeferredIndex
    dead_letter_reasons: DeadLetterReasons

    def _close_stack(self) -> None:
        """Close what the stack built: the deferred index's writer, an owned backend."""
        for middleware in self.middleware:  # type: ignore[attr-defined]
            if isinstance(middleware, DeferringRetries):
                middleware.close()
        breakers = getattr(self, "breakers", None)
        if breakers is not None:
            breakers.close()


class SoulspotRedisBroker(_Shared, RecoveringRedisBroker):
    """A :class:`RecoveringRedisBroker` carrying the deployment's breakers and deferred index;
    ``close`` closes what :func:`build_broker` built for it, then the broker."""

    @property
    def redis(self) -> redis.Redis:
        """The Redis of the breakers, the deferred index and the job records: the broker's own."""
        return self.client

    def close(self) -> None:
        self._close_stack()
        super().close()


class SoulspotRabbitmqBroker(_Shared):
    """Mixed into Dramatiq's RabbitmqBroker: messages in RabbitMQ, breakers in Redis.

    ``redis`` is the client of ``REDIS_URL``; ``close`` closes what :func:`build_broker` built,
    then the broker, then that client.
    """

    def __init__(self, *, redis_client: redis.Redis, **options: object) -> None:
        super().__init__(**options)  # type: ignore[call-arg]
        self.redis = redis_client

    def close(self) -> None:
        self._close_stack()
        try:
            super().close()  # type: ignore[misc]
        finally:
            self.redis.close()


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

    return _Broker(url=url, redis_client=client, middleware=[])
