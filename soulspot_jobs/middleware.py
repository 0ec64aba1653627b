"""Defer, don't fail: the Dramatiq middleware that puts tagged actors behind shared breakers.

An actor tagged ``service="slskd-api"`` (or a message sent with that option) runs only while that
service's breaker admits it. The decision is taken once per message, at its boundary, in this
middleware's hooks; the actor's function is never wrapped, so calling it as a Python function
(an actor calling another actor's function) keeps plain Python semantics, and untagged actors
are untouched: no breaker, no Redis command, Dramatiq's own retries and dead letters.

For a tagged message:

* ``before_process_message`` asks the breaker. Refused (OPEN, or HALF_OPEN with every trial slot
  taken): the message is replaced by a delayed copy (:mod:`soulspot_jobs.deferral`) and skipped.
* ``after_process_message`` reports the outcome. The message is replaced by a delayed copy, with no
  retry spent, when the actor was held back from inside (a :class:`CircuitBreakerError` of another
  service, :class:`RetryLater`) or when its failure left the failing service's breaker OPEN (this
  failure opened it, or it was already open). Any other failure is the message's own failed
  attempt: Dramatiq's Retries handles it (``max_retries``, backoff, ``throws``, ``retry_when``).

This middleware must come *after* Retries in the broker's middleware list, so that its
``after_process_message`` runs first (Dramatiq calls ``after_*`` hooks in reverse order) and a
replaced message is never retried as well.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.middleware import Middleware, Retries, SkipMessage
from dramatiq.middleware.time_limit import TimeLimitExceeded
from dramatiq.rate_limits import RateLimitExceeded

from soulspot_jobs.circuit_breaker import (
    Backend,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
    MemoryBackend,
    Permit,
    RedisBackend,
)
from soulspot_jobs.circuit_breaker.breaker import hold, release_hold
from soulspot_jobs.deferral import (
    DEAD_LETTER_REASON,
    DEFAULT_JITTER_RATIO,
    DEFAULT_MAX_DEFERRAL,
    DEFAULT_MAX_JITTER,
    DEFERRALS,
    DEFERRED_BY,
    FIRST_DEFERRED_AT,
    HISTORY_OPTIONS,
    DeadLettered,
    Deferrals,
    HopMemory,
    Refusal,
)
from soulspot_jobs.deferred import (
    DeferredIndex,
    DeferredJob,
    MemoryDeferredIndex,
    RedisDeferredIndex,
)
from soulspot_jobs.errors import MalformedMessage, RetryLater, is_service_failure
from soulspot_jobs.settings import Settings, load_settings

__all__ = [
    "CircuitBreakerMiddleware",
    "DEAD_LETTER_REASON",
    "DEFERRALS",
    "DEFERRED_BY",
    "FIRST_DEFERRED_AT",
]

log = structlog.get_logger("soulspot_jobs.middleware")

#: Exceptions that end a call without saying anything about the service's health.
NOT_SERVICE_FAILURES = (dramatiq.Retry, RateLimitExceeded)
#: Exceptions that hold a message back from inside: it is deferred, never retried.
HELD_BACK = (CircuitBreakerError, RetryLater)

#: Argument shapes remembered by the wrong-arguments check (a bound on its memory).
MAX_SHAPES = 10_000

#: Log lines of Dramatiq's that say the wrong thing about a deferred message.
_SKIPPED = "Message %s was skipped."
_FAILED = "Failed to process message %s with unhandled exception."
_ABORTED = "Aborting message %r."
_QUIETED_LOGGERS = ("dramatiq.worker.WorkerThread", "dramatiq.middleware.retries.Retries")


class CircuitBreakerMiddleware(Middleware):
    """Runs each tagged message behind its service's breaker; defers it while refused.

    Parameters:
      backend: where breaker state lives; default: Redis at ``settings.redis_url`` when set,
        else process memory. A backend built here is closed with the middleware.
      settings: breaker configs per service; default: :func:`load_settings`.
      breakers: ready-made breakers by service name (custom failure classification).
      is_failure: which exceptions escaping an actor count against its service's breaker, for
        the breakers built here; default :func:`~soulspot_jobs.errors.is_service_failure`
        (the service's own failures, never the job's own errors or bugs).
      index: the deferred-jobs index; default: in the backend's Redis, else in memory.
      on_defer: called with ``(message, deferred_job)`` after each deferral (job records use it
        to show a job as deferred); its errors are logged, never raised.
      on_requeue: called with ``(message)`` when a dead-lettered message comes back (requeued by
        an operator); its errors are logged, never raised.
      on_dead_letter: called with ``(message, reason)`` when a message this middleware
        dead-lettered (deferral budget spent, wrong arguments, malformed) reaches the
        dead-letter queue (job records use it to show the job failed); its errors are logged,
        never raised.
      max_deferral: default deferral budget in milliseconds (actor option ``max_deferral``).
      jitter_ratio, max_jitter: jitter added to each delay: uniform in
        ``[0, min(max_jitter, jitter_ratio * retry_after)]`` seconds, never negative.
      owns_backend: close the backend with the middleware (default: when it was built here).
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
        on_requeue: Callable[[Any], None] | None = None,
        on_dead_letter: Callable[[Any, str], None] | None = None,
        max_deferral: int = DEFAULT_MAX_DEFERRAL,
        jitter_ratio: float = DEFAULT_JITTER_RATIO,
        max_jitter: float = DEFAULT_MAX_JITTER,
        owns_backend: bool | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.owns_backend = backend is None if owns_backend is None else owns_backend
        if backend is None:
            url = self.settings.redis_url
            backend = RedisBackend.from_url(url) if url else MemoryBackend()
        self.backend = backend
        client = backend.client if isinstance(backend, RedisBackend) else None
        prefix = self.settings.key_prefix
        if index is None:
            if client is not None:
                index = RedisDeferredIndex(client, prefix=f"{prefix}:deferred")
            else:
                index = MemoryDeferredIndex()
        self.index = index
        self.deferrals = Deferrals(
            index,
            HopMemory(client, prefix=f"{prefix}:deadletter-hops"),
            on_defer=on_defer,
            max_deferral=max_deferral,
            jitter_ratio=jitter_ratio,
            max_jitter=max_jitter,
        )
        self.is_failure = is_failure
        self.on_requeue = on_requeue
        self.on_dead_letter = on_dead_letter
        self._breakers: dict[str, CircuitBreaker] = dict(breakers or {})
        self._breakers_lock = threading.Lock()
        self._signatures: dict[str, inspect.Signature | None] = {}
        #: Whether arguments of a shape (actor, positional count, keyword names) bind.
        self._shapes: dict[tuple[str, int, tuple[str, ...]], str | None] = {}
        #: Per worker thread: the tagged message being processed and what it holds.
        self._local = threading.local()
        self._log_filter = _DeferralLogFilter(self._local)

    @property
    def actor_options(self) -> set[str]:
        return {"service", "max_deferral"}

    @property
    def max_deferral(self) -> int:
        return self.deferrals.max_deferral

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

    def close(self) -> None:
        """Write the deferred index's buffer; stop the backend's view watcher if owned here."""
        try:
            self.index.close()
        except redis.RedisError as exc:
            log.warning(f"Deferred index not flushed on close: {exc}", event_name="index.lost")
        if self.owns_backend:
            self.backend.close()

    # -- the worker's life ---------------------------------------------------------------

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        for name in _QUIETED_LOGGERS:
            logger = logging.getLogger(name)
            if self._log_filter not in logger.filters:
                logger.addFilter(self._log_filter)
        if self.owns_backend:
            self.backend.reopen()
        _check_order(broker, self)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        for name in _QUIETED_LOGGERS:
            logging.getLogger(name).removeFilter(self._log_filter)
        self.close()

    # -- the message's life --------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        local = self._local
        local.service = local.permit = local.hold = None
        local.replaced = False
        options = message.options
        if options.get(DEAD_LETTER_REASON):
            if self.deferrals.is_hop(message):
                local.replaced = True  # dead-lettered as planned, not "skipped"
                message.fail()
                raise SkipMessage(options[DEAD_LETTER_REASON])
            self._requeued(message)
        service = self._service(broker, message)
        if service is None:
            return
        local.service = service
        problem = self._argument_problem(broker, message)
        if problem is not None:
            self._replace(broker, message, problem)
            raise SkipMessage(problem)
        try:
            local.permit = self.breaker(service).acquire_sync()
        except CircuitBreakerError as refusal:
            self._replace(broker, message, _refusal_of(refusal))
            raise SkipMessage("deferred by circuit breaker") from None
        local.hold = hold(service)
        if options.get(DEFERRALS):
            self.deferrals.forget(options[DEFERRED_BY], message.message_id)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        service, permit = self._end_message()
        if service is None or permit is None:
            return
        breaker = self.breaker(service)
        if exception is None:
            breaker.record_success_sync(permit)
            return
        outcome = self._judge(service, breaker, permit, exception)
        if outcome is None:
            return  # the message's own failed attempt: Dramatiq's Retries takes it from here
        self._replace(broker, message, outcome)
        _keep_retries_away(message, exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """A skipped message never ran to an outcome: give its trial slot back.

        A previously deferred message skipped by another middleware (AgeLimit dead-letters it
        before this middleware sees it) leaves the deferred index here.
        """
        service, permit = self._end_message()
        if permit is not None and service is not None:
            self.breaker(service).release_sync(permit)
        options = message.options
        if not getattr(self._local, "replaced", False) and options.get(DEFERRALS):
            self.deferrals.forget(options[DEFERRED_BY], message.message_id)
        self._local.replaced = False

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        reason = message.options.get(DEAD_LETTER_REASON)
        if not reason:
            return
        self.deferrals.arrived_in_dead_letters(message)
        if self.on_dead_letter is not None:
            try:
                self.on_dead_letter(message, reason)
            except Exception as exc:  # noqa: BLE001 - bookkeeping must never fail a message
                log.warning(f"on_dead_letter failed: {exc}", event_name="job.bookkeeping_failed")

    # -- decisions -----------------------------------------------------------------------

    def _judge(
        self,
        service: str,
        breaker: CircuitBreaker,
        permit: Permit,
        exc: BaseException,
    ) -> Refusal | str | None:
        """What an exception escaping a tagged actor means for its message.

        A :class:`Refusal` defers it, a string dead-letters it with that reason, ``None`` leaves
        it to Dramatiq (a success, a bug, or a failure after which its service's breaker is
        still CLOSED: the message's own failed attempt).
        """
        if isinstance(exc, HELD_BACK):
            breaker.release_sync(permit)
            if isinstance(exc, CircuitBreakerError):
                return _refusal_of(exc)
            return Refusal(exc.service, exc.retry_after, str(exc), self._state(exc.service))
        if isinstance(exc, MalformedMessage):
            breaker.release_sync(permit)
            return f"malformed: {exc}"
        if isinstance(exc, NOT_SERVICE_FAILURES):
            breaker.release_sync(permit)
            return None
        if isinstance(exc, TimeLimitExceeded):
            transition = breaker.record_failure_sync(permit)
            return self._if_open(service, exc, transition.open_for if transition else None)
        failed_service = getattr(exc, "service", None) or service
        if failed_service != service:
            # Another service's client counted this failure on its own breaker already.
            breaker.release_sync(permit)
            if not self.breaker(service).is_failure(exc):
                return None
            return self._if_open(failed_service, exc, None)
        if not breaker.is_failure(exc):
            breaker.release_sync(permit)
            return None
        transition = breaker.record_outcome_sync(permit, exc)
        return self._if_open(service, exc, transition.open_for if transition else None)

    def _if_open(
        self, service: str, exc: BaseException, opened_for: float | None
    ) -> Refusal | None:
        """Defer after a failure only when it left ``service``'s breaker OPEN."""
        if opened_for is None:
            stats = self.breaker(service).stats
            if stats.state is not CircuitState.OPEN or not stats.retry_after:
                return None
            opened_for = stats.retry_after
        retry_after = max(opened_for, getattr(exc, "retry_after", None) or 0.0)
        detail = str(exc).removeprefix(f"{service}: ")
        reason = (
            f"Circuit breaker {service} is OPEN after a failure ({detail}). "
            f"Retry after {retry_after:.1f} seconds."
        )
        return Refusal(service, retry_after, reason, CircuitState.OPEN.value)

    def _state(self, service: str) -> str:
        """The real state of ``service``'s breaker, for the logs (``unknown`` if unreadable)."""
        try:
            return self.breaker(service).stats.state.value
        except Exception:  # noqa: BLE001 - a log field must not fail a deferral
            return "unknown"

    def _argument_problem(self, broker: dramatiq.Broker, message: Any) -> str | None:
        """Why the actor cannot be called with the message's arguments, or ``None``.

        Whether arguments bind depends only on their shape (how many, which keywords), so the
        answer is cached per actor and shape: a healthy message costs a dictionary look-up.
        """
        name = message.actor_name
        shape = (name, len(message.args), tuple(sorted(message.kwargs)))
        if shape in self._shapes:
            return self._shapes[shape]
        if name not in self._signatures:
            try:
                self._signatures[name] = inspect.signature(broker.get_actor(name).fn)
            except (TypeError, ValueError):
                self._signatures[name] = None
        signature, problem = self._signatures[name], None
        if signature is not None:
            try:
                signature.bind(*message.args, **message.kwargs)
            except TypeError as exc:
                problem = f"malformed: wrong arguments for {name}: {exc}"
        if len(self._shapes) < MAX_SHAPES:
            self._shapes[shape] = problem
        return problem

    # -- replacing a message -------------------------------------------------------------

    def _replace(self, broker: dramatiq.Broker, message: Any, outcome: Refusal | str) -> None:
        """Replace ``message`` by a deferred copy or a dead-letter hop; the original is acked.

        When the broker refuses the copy, the original is failed instead (dead-lettered with
        Dramatiq's own record; while the broker is unreachable, kept for redelivery: RabbitMQ
        redelivers it, the recovering Redis broker withholds its rejection): never lost.
        """
        try:
            if isinstance(outcome, Refusal):
                self.deferrals.defer(broker, message, outcome)
            else:
                self._dead_letter(broker, message, self._local.service or "none", outcome)
        except Exception as exc:  # noqa: BLE001 - whatever the broker raised
            log.error(
                f"Message {message.message_id} could not be replaced ({exc}); it is failed "
                "instead, so that it is not lost.",
                event_name="job.replace_failed",
                message_id=message.message_id,
                actor=message.actor_name,
            )
            message.fail()
            return
        message.options["store_results"] = False
        self._local.replaced = True

    def _dead_letter(
        self, broker: dramatiq.Broker, message: Any, service: str, reason: str
    ) -> DeadLettered:
        return self.deferrals.dead_letter(
            broker, message, service, reason, state=self._state(service)
        )

    def _requeued(self, message: Any) -> None:
        """A dead letter came back: it runs now, with a fresh deferral budget."""
        for option in HISTORY_OPTIONS:
            message.options.pop(option, None)
        log.info(
            f"Message {message.message_id} was requeued from the dead-letter queue.",
            event_name="job.requeued",
            message_id=message.message_id,
            actor=message.actor_name,
        )
        if self.on_requeue is not None:
            try:
                self.on_requeue(message)
            except Exception as exc:  # noqa: BLE001 - bookkeeping must never fail a message
                log.warning(f"on_requeue failed: {exc}", event_name="job.bookkeeping_failed")

    # -- per-thread state ----------------------------------------------------------------

    def _end_message(self) -> tuple[str | None, Permit | None]:
        local = self._local
        service, permit = getattr(local, "service", None), getattr(local, "permit", None)
        local.service = local.permit = None
        held = getattr(local, "hold", None)
        if held is not None:
            release_hold(held)
            local.hold = None
        return service, permit

    @staticmethod
    def _service(broker: dramatiq.Broker, message: Any) -> str | None:
        service = message.options.get("service")
        if service is None:
            actor = broker.actors.get(message.actor_name)
            service = actor.options.get("service") if actor is not None else None
        return service


def _refusal_of(error: CircuitBreakerError) -> Refusal:
    return Refusal(error.service_name, error.retry_after, str(error), error.state.value)


def _keep_retries_away(message: Any, exception: BaseException) -> None:
    """Stop Dramatiq's Retries from retrying or failing a message that was replaced.

    Retries (whose ``after_process_message`` runs right after ours) leaves a message alone only
    when its exception is in ``throws``, and then fails it. This delivery was replaced by a copy,
    so it must be acknowledged: ``throws`` is set for this delivery alone, and failing it is made
    a no-op on its proxy (the proxy lives only as long as this delivery).
    """
    message.options["throws"] = (type(exception),)
    message.fail = _not_failed


def _not_failed() -> None:
    """Stands in for ``MessageProxy.fail`` on a delivery that was replaced by a copy."""


def _check_order(broker: dramatiq.Broker, middleware: CircuitBreakerMiddleware) -> None:
    """Log CRITICAL when Retries comes after the middleware: replaced messages would be retried."""
    position = broker.middleware.index(middleware)
    if any(isinstance(m, Retries) for m in broker.middleware[position + 1 :]):
        log.critical(
            "CircuitBreakerMiddleware must come after Retries in the middleware list "
            "(broker.add_middleware(CircuitBreakerMiddleware(...)) with no position does that); "
            "deferred messages would otherwise also be retried.",
            event_name="middleware.misplaced",
        )


class _DeferralLogFilter(logging.Filter):
    """Drops Dramatiq's log lines that misdescribe a deferred or dead-lettered message.

    The worker says "skipped" for a message deferred before it ran, logs an unhandled-exception
    ERROR for an actor held back from inside, and Retries says "Aborting" for the replaced
    original; each of these messages was deferred (``job.deferred``) or dead-lettered instead.
    """

    def __init__(self, local: threading.local) -> None:
        super().__init__()
        self._local = local

    def filter(self, record: logging.LogRecord) -> bool:
        local = self._local
        if record.msg in (_SKIPPED, _ABORTED):
            return not getattr(local, "replaced", False)
        if record.msg == _FAILED and record.exc_info and getattr(local, "service", None):
            exc = record.exc_info[1]
            return not isinstance(exc, (*HELD_BACK, MalformedMessage))
        return True
