"""``DeferringRetries``: the one place that decides what a failed or held message becomes.

It takes the place of Dramatiq's :class:`~dramatiq.middleware.Retries` in the project's stack
(:func:`~.stack.middleware_stack`) and, for each message whose actor call raised, decides once:

* **defer** -- the message was held back: refused by its breaker before it ran (the
  :class:`~.breakers.CircuitBreakerMiddleware` raised the refusal in place of the call), or held
  from inside by a :class:`~soulspot_jobs.circuit_breaker.CircuitBreakerError` of another
  service or a :class:`~soulspot_jobs.errors.RetryLater`; or it ran into an outage of its
  service (:class:`~soulspot_jobs.errors.ServiceOutage`: slskd logged out of Soulseek,
  credentials refused), which its breaker counts but which is no fault of the message. A
  delayed copy runs after ``retry_after`` (plus jitter), or as soon as its service's breaker
  closes if that comes first (:mod:`.release`; not for a ``RetryLater``, whose service or rate
  limit asked for the time); no retry is spent. Past the message's deferral budget (actor
  option ``max_deferral``) it is dead-lettered instead.
* **dead-letter with a reason** -- the message cannot start (wrong arguments, no such job), or
  its deferral budget is spent. The delivery is failed (the broker moves it to its dead letters)
  and the reason is kept beside it (:class:`~soulspot_jobs.deferral.DeadLetterReasons`).
* **retry** -- anything else: the message ran and failed, which is its own attempt. Dramatiq's
  rules apply unchanged: ``throws``, ``max_retries``, ``retry_when``, ``min_backoff`` and
  ``max_backoff``, a :class:`dramatiq.Retry`'s ``delay``, ``on_retry_exhausted``. When the
  failure left a breaker OPEN, the retry also waits until that breaker admits trials again (or
  runs as soon as it closes, if that comes first) and is listed in the deferred index meanwhile.

So an outage never spends a retry of a message that did not run, and a message that keeps
failing -- a poison message, even alone on its service, its failed HALF_OPEN trials included --
is attempted at most ``max_retries + 1`` times.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import dramatiq
import structlog
from dramatiq.common import compute_backoff
from dramatiq.middleware import Retries
from dramatiq.middleware.retries import DEFAULT_MAX_BACKOFF

from soulspot_jobs.deferral.deferrals import Deferrals, Refusal, now_ms
from soulspot_jobs.deferral.options import (
    DEFERRALS,
    DEFERRED_BY,
    FIRST_DEFERRED_AT,
    RELEASE_FROM,
)
from soulspot_jobs.deferral.reasons import DeadLetterReasons
from soulspot_jobs.errors import Failure, HoldBack, RetryLater, classify
from soulspot_jobs.middleware.fields import message_fields

__all__ = ["DeferringRetries"]

log = structlog.get_logger("soulspot_jobs.middleware")

#: Seconds a message that met a service's outage waits when no breaker of that service said
#: for how long (its actor is not tagged with that service).
OUTAGE_RETRY_AFTER = 30.0


class _Decided(threading.local):
    """The message the current worker thread dead-lettered, and why (read in ``after_nack``)."""

    message_id: str | None = None
    reason: str | None = None


class DeferringRetries(Retries):
    """Dramatiq's Retries, deciding also for held and malformed messages; see the module doc.

    Parameters:
      deferrals: replaces held messages by delayed copies and lists them.
      reasons: where the reason of each dead letter it makes is kept.
      failure_left_open: called after a failed attempt: whether it left a breaker OPEN (the
        :meth:`~.breakers.CircuitBreakerMiddleware.failure_left_open` of the stack's breaker
        middleware); default: never.
      state_of: the state of a service's breaker, for the log of a deferral held from inside.
      on_dead_letter: called with ``(message, reason)`` once a message it dead-lettered is in
        the dead letters (job records show the job failed); its errors are logged, never raised.
      max_retries, min_backoff, max_backoff, retry_when: as Dramatiq's Retries.
    """

    def __init__(
        self,
        *,
        deferrals: Deferrals,
        reasons: DeadLetterReasons | None = None,
        failure_left_open: Callable[[], Refusal | None] | None = None,
        state_of: Callable[[str], str] | None = None,
        on_dead_letter: Callable[[Any, str], None] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.deferrals = deferrals
        self.reasons = reasons or DeadLetterReasons()
        self._failure_left_open = failure_left_open or (lambda: None)
        self._state_of = state_of or (lambda service: "unknown")
        self.on_dead_letter = on_dead_letter
        self._decided = _Decided()

    @property
    def actor_options(self) -> set[str]:
        return super().actor_options | {"max_deferral"}

    # -- hooks -----------------------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """A deferred message about to run leaves the deferred index."""
        fields = message_fields(message)
        service = fields.options.get(DEFERRED_BY)
        if service is not None:
            self.deferrals.forget(service, fields.message_id)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """A deferred message skipped by another middleware (AgeLimit) leaves it too."""
        self.before_process_message(broker, message)

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        if exception is None:
            return
        kind = classify(exception)
        if kind is Failure.HOLD:
            assert isinstance(exception, HoldBack)
            self._defer(broker, message, self._refusal_of(exception))
        elif kind is Failure.OUTAGE:
            self._defer(broker, message, self._failure_left_open() or self._outage(exception))
        elif kind is Failure.MALFORMED:
            self._dead_letter(message, f"malformed: {exception}")
        else:
            self._retry(broker, message, exception)

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        decided = self._decided
        if decided.message_id != message.message_id or decided.reason is None:
            return
        reason, decided.message_id, decided.reason = decided.reason, None, None
        if self.on_dead_letter is not None:
            try:
                self.on_dead_letter(message, reason)
            except Exception as exc:  # noqa: BLE001 - bookkeeping must never fail a message
                log.warning(f"on_dead_letter failed: {exc}", event_name="job.bookkeeping_failed")

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.close()

    def close(self) -> None:
        """Write what the deferred index buffers."""
        try:
            self.deferrals.close()
        except Exception as exc:  # noqa: BLE001 - the index is a view; the messages are safe
            log.warning(f"Deferred index not flushed on close: {exc}", event_name="index.lost")

    # -- the three outcomes ----------------------------------------------------------------

    def _defer(self, broker: dramatiq.Broker, message: Any, refusal: Refusal) -> None:
        try:
            outcome = self.deferrals.defer(broker, message, refusal)
        except Exception as exc:  # noqa: BLE001 - whatever the broker raised
            self._keep(message, exc)
            return
        if isinstance(outcome, str):
            self._dead_letter(message, outcome, service=refusal.service, state=refusal.state)

    def _dead_letter(
        self, message: Any, reason: str, *, service: str | None = None, state: str = "unknown"
    ) -> None:
        """Fail the delivery (the broker dead-letters it) and keep ``reason`` beside it."""
        try:
            self.reasons.record(message.message_id, reason)
        except Exception as exc:  # noqa: BLE001 - the message still goes to the dead letters
            log.warning(f"Dead-letter reason not kept: {exc}", event_name="job.bookkeeping_failed")
        forget = message.options.get(DEFERRED_BY)
        if forget is not None:
            self.deferrals.forget(forget, message.message_id)
        self._decided.message_id, self._decided.reason = message.message_id, reason
        message.fail()
        log.error(
            f"Message {message.message_id} goes to the dead-letter queue: {reason}",
            event_name="job.dead_lettered",
            circuit_breaker=service or message.options.get("service"),
            state=state,
            message_id=message.message_id,
            actor=message.actor_name,
            reason=reason,
        )

    def _retry(self, broker: dramatiq.Broker, message: Any, exception: BaseException) -> None:
        """Dramatiq's rules for a failed attempt; a retry waits for a breaker its failure left
        OPEN."""
        waiting = self._failure_left_open()
        actor = broker.get_actor(message.actor_name)
        options = message.options
        throws = options.get("throws") or actor.options.get("throws")
        if throws and isinstance(exception, throws):
            self.logger.info("Aborting message %r.", message.message_id)
            message.fail()
            return
        retries = options.setdefault("retries", 0)
        options["retries"] += 1
        options["traceback"] = traceback.format_exc(limit=30)
        options["requeue_timestamp"] = int(time.time() * 1000)
        if self._exhausted(actor, message, retries, exception):
            self._give_up(broker, actor, message, retries)
            return
        delay = self._backoff(actor, message, retries, exception)
        if waiting is not None:
            delay = max(delay, self.deferrals.delay_ms(waiting.retry_after))
        self.logger.info("Retrying message %r in %d milliseconds.", message.message_id, delay)
        # A retry waiting for a breaker waits for its service (its failure was the service's):
        # it runs once the breaker closes. Any other retry waits for its eta, whatever an
        # earlier deferral of it allowed.
        history: dict[str, Any] = {}
        if waiting is not None:
            history = {DEFERRED_BY: waiting.service, RELEASE_FROM: now_ms()}
        elif options.get(RELEASE_FROM) is not None:
            history = {RELEASE_FROM: None}
        try:
            broker.enqueue(message.copy(options=history), delay=delay)
        except Exception as exc:  # noqa: BLE001 - whatever the broker raised
            self._keep(message, exc)
            return
        if waiting is not None:
            self.deferrals.list(
                message,
                waiting,
                delay=delay,
                now=now_ms(),
                deferrals=options.get(DEFERRALS, 0),
                first_deferred_at=options.get(FIRST_DEFERRED_AT) or now_ms(),
            )

    # -- Dramatiq's rules ------------------------------------------------------------------

    def _exhausted(
        self, actor: dramatiq.Actor, message: Any, retries: int, exception: BaseException
    ) -> bool:
        """Whether ``retries`` earlier retries are all the message gets (``retry_when`` first,
        else ``max_retries``: message, actor, middleware)."""
        retry_when = actor.options.get("retry_when", self.retry_when)
        if retry_when is not None:
            return not retry_when(retries, exception)
        max_retries = self._max_retries(actor, message)
        return max_retries is not None and retries >= max_retries

    def _max_retries(self, actor: dramatiq.Actor, message: Any) -> int | None:
        return message.options.get(
            "max_retries", actor.options.get("max_retries", self.max_retries)
        )

    def _give_up(
        self, broker: dramatiq.Broker, actor: dramatiq.Actor, message: Any, retries: int
    ) -> None:
        self.logger.warning("Retries exceeded for message %r.", message.message_id)
        message.fail()
        target = message.options.get("on_retry_exhausted") or actor.options.get(
            "on_retry_exhausted"
        )
        if target:
            broker.get_actor(target).send(
                message.asdict(),
                {"retries": retries, "max_retries": self._max_retries(actor, message)},
            )

    def _backoff(
        self, actor: dramatiq.Actor, message: Any, retries: int, exception: BaseException
    ) -> int:
        """Milliseconds before the retry: a ``dramatiq.Retry``'s own ``delay``, else the
        exponential backoff between ``min_backoff`` and ``max_backoff``."""
        if isinstance(exception, dramatiq.Retry) and exception.delay is not None:
            return int(exception.delay)
        options = message.options
        min_backoff = options.get("min_backoff", actor.options.get("min_backoff", self.min_backoff))
        max_backoff = options.get("max_backoff", actor.options.get("max_backoff", self.max_backoff))
        _, delay = compute_backoff(
            retries, factor=min_backoff, max_backoff=min(max_backoff, DEFAULT_MAX_BACKOFF)
        )
        return int(delay)

    # -- helpers ---------------------------------------------------------------------------

    def _refusal_of(self, hold: HoldBack) -> Refusal:
        state = getattr(hold, "state", None)
        return Refusal(
            hold.service,
            hold.retry_after,
            str(hold),
            state.value if state is not None else self._state_of(hold.service),
            releasable=not isinstance(hold, RetryLater),
        )

    def _outage(self, exc: BaseException) -> Refusal:
        """How long a message that met an outage of a service no breaker here guards waits."""
        service = getattr(exc, "service", "unknown")
        retry_after = getattr(exc, "retry_after", None) or OUTAGE_RETRY_AFTER
        return Refusal(service, retry_after, str(exc), self._state_of(service))

    @staticmethod
    def _keep(message: Any, exc: BaseException) -> None:
        """What runs next could not be enqueued: fail this delivery rather than lose it.

        While the broker is unreachable the failure is not final: RabbitMQ redelivers an
        unacknowledged message, and the recovering Redis broker withholds the rejection so the
        message runs again once Redis is back. Otherwise Dramatiq dead-letters it.
        """
        log.error(
            f"Message {message.message_id} could not be enqueued again ({exc}); it is failed "
            "instead, so that it is not lost.",
            event_name="job.replace_failed",
            message_id=message.message_id,
            actor=message.actor_name,
        )
        message.fail()
