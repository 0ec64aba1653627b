"""Defer, don't fail: the Dramatiq middleware that puts tagged actors behind shared breakers.

An actor tagged ``service="slskd-api"`` runs only while that service's breaker admits it. When
the breaker refuses (OPEN, or HALF_OPEN with every trial slot taken), the message is re-enqueued
with ``delay = retry_after`` plus a little jitter and the original is acknowledged without running:
it is not failed, its ``retries`` do not change, and Results stores nothing for it. An actor that
raises :class:`CircuitBreakerError` from inside (a client of another service refused) is deferred
the same way, by that service's breaker. A message deferred for longer than its budget goes to the
dead-letter queue with a reason. Only the public ``Broker`` API is used, so the middleware works
on every broker.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.middleware.time_limit import TimeLimitExceeded
from dramatiq.rate_limits import RateLimitExceeded

from soulspot_jobs.circuit_breaker import (
    Backend,
    CircuitBreaker,
    CircuitBreakerError,
    MemoryBackend,
    Permit,
    RedisBackend,
    holding,
)
from soulspot_jobs.deferred import (
    DeferredIndex,
    DeferredJob,
    MemoryDeferredIndex,
    RedisDeferredIndex,
)
from soulspot_jobs.errors import MalformedMessage, RetryLater, is_service_failure
from soulspot_jobs.settings import Settings, load_settings

log = structlog.get_logger("soulspot_jobs.middleware")

#: Default deferral budget in milliseconds: a message deferred for longer is dead-lettered.
DEFAULT_MAX_DEFERRAL = 24 * 60 * 60 * 1000
#: Jitter added to a deferral, as a fraction of its ``retry_after`` ...
DEFAULT_JITTER_RATIO = 0.1
#: ... and never more than this many seconds.
DEFAULT_MAX_JITTER = 5.0
#: The Redis broker refuses delays of 7 days or more (milliseconds).
MAX_DELAY = 7 * 24 * 60 * 60 * 1000 - 1

#: Message options carrying a deferred message's history.
DEFERRALS = "circuit_breaker_deferrals"
FIRST_DEFERRED_AT = "circuit_breaker_first_deferred_at"
DEFERRED_BY = "circuit_breaker_service"
#: Set on a message on its way to the dead-letter queue: why it is there.
DEAD_LETTER_REASON = "circuit_breaker_dead_letter_reason"

#: Seconds a message waits after its service failed under it while the breaker stayed CLOSED.
SERVICE_FAILURE_BACKOFF = 1.0

#: Exceptions that end a call without saying anything about the service's health.
NOT_SERVICE_FAILURES = (dramatiq.Retry, RateLimitExceeded)

#: The worker's own log line for skipped messages, silenced for deferrals.
_SKIP_LOG_MESSAGE = "Message %s was skipped."
_WORKER_THREAD_LOGGER = "dramatiq.worker.WorkerThread"


def _now_ms() -> int:
    return int(time.time() * 1000)


class CircuitBreakerMiddleware(Middleware):
    """Runs each tagged message behind its service's breaker; defers it while refused.

    Parameters:
      backend: where breaker state lives; default: Redis at ``settings.redis_url`` when set,
        else process memory.
      settings: breaker configs per service; default: :func:`load_settings`.
      breakers: ready-made breakers by service name (custom failure classification).
      is_failure: which exceptions escaping an actor count against its service's breaker, for
        the breakers built here; default :func:`~soulspot_jobs.errors.is_service_failure`
        (the service's own failures, never the job's own errors or bugs).
      index: the deferred-jobs index; default: in the backend's Redis, else in memory.
      on_defer: called with ``(message, deferred_job)`` after each deferral (job records use it
        to show a job as deferred); it must not raise.
      max_deferral: default deferral budget in milliseconds (actor option ``max_deferral``).
      jitter_ratio, max_jitter: jitter added to each delay: uniform in
        ``[0, min(max_jitter, jitter_ratio * retry_after)]`` seconds, never negative.
    """

    def __init__(
        self,
        *,
        backend: Backend | None = None,
        settings: Settings | None = None,
        breakers: Mapping[str, CircuitBreaker] | None = None,
        index: DeferredIndex | None = None,
        is_failure: Callable[[BaseException], bool] = is_service_failure,
        on_defer: Callable[[Any, DeferredJob], None] | None = None,
        max_deferral: int = DEFAULT_MAX_DEFERRAL,
        jitter_ratio: float = DEFAULT_JITTER_RATIO,
        max_jitter: float = DEFAULT_MAX_JITTER,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        if backend is None:
            url = self.settings.redis_url
            backend = RedisBackend.from_url(url) if url else MemoryBackend()
        self.backend = backend
        if index is None:
            if isinstance(backend, RedisBackend):
                index = RedisDeferredIndex(
                    backend.client, prefix=f"{self.settings.key_prefix}:deferred"
                )
            else:
                index = MemoryDeferredIndex()
        self.index = index
        self.is_failure = is_failure
        self.on_defer = on_defer
        self.max_deferral = max_deferral
        self.jitter_ratio = jitter_ratio
        self.max_jitter = max_jitter
        self._breakers: dict[str, CircuitBreaker] = dict(breakers or {})
        self._breakers_lock = threading.Lock()
        #: Per worker thread: the message being processed, its permit, whether it is deferred.
        self._local = threading.local()
        self._log_filter = _DeferralSkipFilter(self._local)

    @property
    def actor_options(self) -> set[str]:
        return {"service", "max_deferral"}

    def breaker(self, service: str) -> CircuitBreaker:
        """The breaker of ``service``, built from the settings on first use."""
        breaker = self._breakers.get(service)
        if breaker is None:
            with self._breakers_lock:
                breaker = self._breakers.get(service)
                if breaker is None:
                    config = self.settings.observability.circuit_breaker.config_for(service)
                    breaker = CircuitBreaker(
                        service, config, backend=self.backend, is_failure=self.is_failure
                    )
                    self._breakers[service] = breaker
        return breaker

    # -- wiring --------------------------------------------------------------------------

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor) -> None:
        """Wrap the actor so a :class:`CircuitBreakerError` from inside defers the message."""
        if getattr(actor.fn, "_defers_on_breaker_error", False):
            return
        actor.fn = self._deferring(broker, actor.fn)

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        logging.getLogger(_WORKER_THREAD_LOGGER).addFilter(self._log_filter)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        logging.getLogger(_WORKER_THREAD_LOGGER).removeFilter(self._log_filter)
        self.index.flush()

    # -- the message's life --------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        local = self._local
        local.message, local.permit, local.service, local.deferring = message, None, None, False
        options = message.options
        if options.get(DEAD_LETTER_REASON):
            self._dead_letter_now(message)
        service = options.get("service") or broker.get_actor(message.actor_name).options.get(
            "service"
        )
        if service is not None:
            try:
                local.permit = self.breaker(service).acquire_sync()
            except CircuitBreakerError as exc:
                self._defer(broker, message, exc)
            local.service = service
        if options.get(DEFERRALS):
            self.index.remove(options[DEFERRED_BY], message.message_id)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        permit = self._take_permit()
        if permit is None:
            return
        breaker = self.breaker(self._service(broker, message))
        if exception is None:
            breaker.record_success_sync(permit)
        elif isinstance(exception, TimeLimitExceeded):
            breaker.record_failure_sync(permit)
        elif isinstance(exception, NOT_SERVICE_FAILURES):
            breaker.release_sync(permit)
        else:
            breaker.record_outcome_sync(permit, exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """A skipped message never ran to an outcome: give its trial slot back.

        A previously deferred message skipped by another middleware (AgeLimit dead-letters it
        before this middleware sees it) leaves the deferred index here.
        """
        self._release_permit(broker, message)
        if not getattr(self._local, "deferring", False) and message.options.get(DEFERRALS):
            self.index.remove(message.options[DEFERRED_BY], message.message_id)
        self._local.deferring = False

    # -- deferral ------------------------------------------------------------------------

    def _deferring(self, broker: dramatiq.Broker, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run_or_defer(*args: Any, **kwargs: Any) -> Any:
            service = getattr(self._local, "service", None)
            try:
                if service is None:
                    return fn(*args, **kwargs)
                with holding(service):  # the message holds this breaker's permit already
                    return fn(*args, **kwargs)
            except (CircuitBreakerError, RetryLater) as exc:
                message = getattr(self._local, "message", None)
                if message is None:
                    raise
                self._defer(broker, message, exc)
            except MalformedMessage as exc:
                message = getattr(self._local, "message", None)
                if message is None:
                    raise
                self._release_permit(broker, message)
                self._send_to_dead_letters(broker, message, service or "none", f"malformed: {exc}")
            except Exception as exc:
                message = getattr(self._local, "message", None)
                judge = self.breaker(service).is_failure if service else self.is_failure
                if message is None or not judge(exc):
                    raise
                self._defer(broker, message, self._after_service_failure(service, exc))

        run_or_defer._defers_on_breaker_error = True  # type: ignore[attr-defined]
        return run_or_defer

    def _after_service_failure(self, service: str | None, exc: Exception) -> RetryLater:
        """Count a service failure under a message, and say when the message should try again.

        Outages must not burn retries: a failure of the actor's own service is recorded on its
        breaker and the message is deferred (until the breaker's timeout when this failure opened
        it, else briefly). A failure of another service (its client's guard counted it already)
        only defers the message.
        """
        failed_service = getattr(exc, "service", None) or service or "unknown"
        retry_after = getattr(exc, "retry_after", None) or SERVICE_FAILURE_BACKOFF
        permit = self._take_permit()
        if permit is not None and service is not None:
            breaker = self.breaker(service)
            if failed_service == service:
                transition = breaker.record_outcome_sync(permit, exc)
                if transition is not None and transition.open_for:
                    retry_after = max(retry_after, transition.open_for)
            else:
                breaker.release_sync(permit)
        detail = str(exc).removeprefix(f"{failed_service}: ")
        return RetryLater(failed_service, retry_after, f"service failed ({detail})")

    def _defer(
        self, broker: dramatiq.Broker, message: Any, refusal: CircuitBreakerError | RetryLater
    ) -> None:
        """Re-enqueue ``message`` after the refusal's ``retry_after``; always raises SkipMessage.

        ``refusal`` is a breaker's (OPEN or HALF_OPEN and busy) or the job's own
        :class:`RetryLater` (back-pressure, a busy shared rate limit).
        """
        now = _now_ms()
        options = message.options
        deferrals = options.get(DEFERRALS, 0) + 1
        first_deferred_at = options.get(FIRST_DEFERRED_AT) or now
        actor = broker.get_actor(message.actor_name)
        budget = options.get("max_deferral") or actor.options.get("max_deferral", self.max_deferral)
        if isinstance(refusal, CircuitBreakerError):
            service, state = refusal.service_name, refusal.state.value
        else:
            service, state = refusal.service, "closed"
        if now - first_deferred_at >= budget:
            reason = (
                f"deferred {deferrals - 1} times over {(now - first_deferred_at) / 1000:.1f} s "
                f"by circuit breaker {service}, past the budget of {budget / 1000:.1f} s"
            )
            self._send_to_dead_letters(broker, message, service, reason)
        delay = min(self._delay_ms(refusal.retry_after), MAX_DELAY)
        history = {DEFERRALS: deferrals, FIRST_DEFERRED_AT: first_deferred_at, DEFERRED_BY: service}
        broker.enqueue(message.copy(options=history), delay=delay)
        deferred = DeferredJob(
            message_id=message.message_id,
            actor=message.actor_name,
            queue=message.queue_name,
            service=service,
            eta=now + delay,
            deferrals=deferrals,
            first_deferred_at=first_deferred_at,
            reason=str(refusal),
        )
        self.index.add(deferred)
        if self.on_defer is not None:
            self.on_defer(message, deferred)
        log.warning(
            str(refusal),
            event_name="job.deferred",
            circuit_breaker=service,
            state=state,
            retry_after=round(refusal.retry_after, 3),
            delay=round(delay / 1000, 3),
            message_id=message.message_id,
            actor=message.actor_name,
            service=service,
            deferrals=deferrals,
        )
        self._skip_quietly(message)

    def _delay_ms(self, retry_after: float) -> int:
        jitter = random.uniform(0.0, min(self.max_jitter, self.jitter_ratio * retry_after))
        # Rounded up: the message must never come back before ``retry_after``.
        return int(-(-(retry_after + jitter) * 1000 // 1))

    def _send_to_dead_letters(
        self, broker: dramatiq.Broker, message: Any, service: str, reason: str
    ) -> None:
        """Re-enqueue ``message`` marked with ``reason``; the worker dead-letters it on arrival.

        The hop makes the reason part of the dead-lettered message on every broker (brokers
        dead-letter the message as it was enqueued, not as a middleware changed it).
        """
        self.index.remove(message.options.get(DEFERRED_BY, service), message.message_id)
        broker.enqueue(message.copy(options={DEAD_LETTER_REASON: reason, DEFERRED_BY: service}))
        self._skip_quietly(message)

    def _dead_letter_now(self, message: Any) -> None:
        log.error(
            f"Message {message.message_id} dead-lettered: {message.options[DEAD_LETTER_REASON]}",
            event_name="job.dead_lettered",
            circuit_breaker=message.options.get(DEFERRED_BY),
            state="open",
            message_id=message.message_id,
            actor=message.actor_name,
            reason=message.options[DEAD_LETTER_REASON],
        )
        message.fail()
        raise SkipMessage(message.options[DEAD_LETTER_REASON])

    def _skip_quietly(self, message: Any) -> None:
        """Skip the original: no result stored for it, no "was skipped" warning logged."""
        message.options["store_results"] = False
        self._local.deferring = True
        raise SkipMessage("deferred by circuit breaker")

    def _release_permit(self, broker: dramatiq.Broker, message: Any) -> None:
        permit = self._take_permit()
        if permit is not None:
            self.breaker(self._service(broker, message)).release_sync(permit)

    def _take_permit(self) -> Permit | None:
        permit = getattr(self._local, "permit", None)
        self._local.permit = None
        return permit

    @staticmethod
    def _service(broker: dramatiq.Broker, message: Any) -> str:
        return (
            message.options.get("service")
            or broker.get_actor(message.actor_name).options["service"]
        )


class _DeferralSkipFilter(logging.Filter):
    """Drops the worker's "Message ... was skipped." line for messages that were deferred."""

    def __init__(self, local: threading.local) -> None:
        super().__init__()
        self._local = local

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _SKIP_LOG_MESSAGE and getattr(self._local, "deferring", False))
