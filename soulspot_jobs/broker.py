"""``build_broker``: a Dramatiq broker with the circuit-breaker middleware in its place."""

from __future__ import annotations

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
) -> SoulspotRedisBroker:
    """A Redis broker on ``url`` (default ``REDIS_URL``) whose breakers live in the same Redis.

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
    lost from memory are requeued too.
    """
    settings = settings if settings is not None else load_settings()
    url = url or settings.redis_url
    if url is None:
        raise ConfigurationError("REDIS_URL is not set: the broker needs a Redis server")
    recovery = settings.recovery
    broker = SoulspotRedisBroker(
        url=url,
        namespace=f"{settings.key_prefix}:dramatiq",
        heartbeat_timeout=int(recovery.heartbeat_timeout * 1000),
    )
    owns_backend = backend is None
    if backend is None:
        backend = RedisBackend(broker.client, prefix=f"{settings.key_prefix}:breaker")
    middleware = CircuitBreakerMiddleware(
        backend=backend,
        settings=settings,
        owns_backend=owns_backend,
        **middleware_options,  # type: ignore[arg-type]
    )
    broker.add_middleware(middleware)
    broker.add_middleware(DaemonAsyncIO())
    broker.add_middleware(ExitGuard())
    marker_key = f"{settings.key_prefix}:recovery:alive"
    broker.add_middleware(Recovery(recovery, marker_key=marker_key), before=AgeLimit)
    if prometheus:
        from soulspot_jobs.dramatiq_prometheus import DramatiqPrometheus

        broker.add_middleware(DramatiqPrometheus(), before=Recovery)
    return broker


class SoulspotRedisBroker(RecoveringRedisBroker):
    """A RedisBroker whose ``close`` first closes the middleware that hold resources.

    The circuit-breaker middleware owns a writer thread (the deferred index) and, when it built
    its backend, the breakers' view watcher: closing the broker stops them.
    """

    def close(self) -> None:
        for middleware in self.middleware:
            if isinstance(middleware, CircuitBreakerMiddleware):
                middleware.close()
        super().close()
