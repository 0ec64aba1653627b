"""``Deferrals``: a held message is replaced by a delayed copy carrying its history.

The copy runs once ``retry_after`` (plus a bounded jitter, never less) has passed, or sooner when
its service's breaker closes first (:mod:`soulspot_jobs.middleware.release`), and is listed in
the deferred index until it runs. A message deferred for longer than its deferral budget
(actor option ``max_deferral``, milliseconds) is not deferred again: :meth:`Deferrals.defer`
says so, and the project's Retries dead-letters it. Nothing here decides *whether* a message is
held: :mod:`soulspot_jobs.middleware.retries` does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import structlog

from soulspot_jobs.deferral.index import DeferredIndex, DeferredJob
from soulspot_jobs.deferral.options import (
    DEFERRALS,
    DEFERRED_BY,
    FIRST_DEFERRED_AT,
    RELEASE_FROM,
)

log = structlog.get_logger("soulspot_jobs.middleware")

#: Default deferral budget in milliseconds: a message deferred for longer is dead-lettered.
DEFAULT_MAX_DEFERRAL = 24 * 60 * 60 * 1000
#: Jitter added to a deferral, as a fraction of its ``retry_after`` ...
DEFAULT_JITTER_RATIO = 0.1
#: ... and never more than this many seconds.
DEFAULT_MAX_JITTER = 5.0
#: The Redis broker refuses delays of 7 days or more (milliseconds).
MAX_DELAY = 7 * 24 * 60 * 60 * 1000 - 1


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a message cannot run now, and for how long: a breaker's refusal or back-pressure."""

    #: The service whose breaker (or limit) holds the message back.
    service: str
    #: Seconds until the message may run.
    retry_after: float
    #: The sentence logged and shown in the deferred index.
    reason: str
    #: The breaker's state when the message was held back (``open``, ``half_open``, ...).
    state: str
    #: Whether the message waits only for its service to be back, and so may run as soon as
    #: that service's breaker closes; ``False`` for back-pressure (the service or a rate limit
    #: asked for the time), which waits for its eta.
    releasable: bool = True


class Deferrals:
    """Replaces held messages by delayed copies and lists them in the deferred index.

    Parameters:
      index: where deferred messages are listed; its errors never affect a message.
      on_defer: called with ``(message, deferred_job)`` after each deferral (job records show
        the job deferred); its errors are logged, never raised.
      max_deferral: default deferral budget in milliseconds (actor option ``max_deferral``).
      jitter_ratio, max_jitter: jitter added to each delay: uniform in
        ``[0, min(max_jitter, jitter_ratio * retry_after)]`` seconds, never negative.
    """

    def __init__(
        self,
        index: DeferredIndex,
        *,
        on_defer: Callable[[Any, DeferredJob], None] | None = None,
        max_deferral: int = DEFAULT_MAX_DEFERRAL,
        jitter_ratio: float = DEFAULT_JITTER_RATIO,
        max_jitter: float = DEFAULT_MAX_JITTER,
    ) -> None:
        self.index = index
        self.on_defer = on_defer
        self.max_deferral = max_deferral
        self.jitter_ratio = jitter_ratio
        self.max_jitter = max_jitter

    def defer(
        self, broker: dramatiq.Broker, message: Any, refusal: Refusal
    ) -> DeferredJob | str:
        """Enqueue a delayed copy of ``message`` and list it; past its budget, enqueue nothing
        and return why (the caller dead-letters it with that reason).

        Raises whatever the broker raises when the copy cannot be enqueued: the caller must then
        keep the original.
        """
        now = now_ms()
        options = message.options
        deferrals = options.get(DEFERRALS, 0) + 1
        first_deferred_at = options.get(FIRST_DEFERRED_AT) or now
        budget = self.budget(broker, message)
        if now - first_deferred_at >= budget:
            return (
                f"deferred {deferrals - 1} times over {(now - first_deferred_at) / 1000:.1f} s "
                f"by circuit breaker {refusal.service}, past the budget of {budget / 1000:.1f} s"
            )
        delay = self.delay_ms(refusal.retry_after)
        history = {
            DEFERRALS: deferrals,
            FIRST_DEFERRED_AT: first_deferred_at,
            DEFERRED_BY: refusal.service,
            RELEASE_FROM: now if refusal.releasable else None,
        }
        broker.enqueue(message.copy(options=history), delay=delay)
        return self.list(message, refusal, delay=delay, now=now, deferrals=deferrals,
                         first_deferred_at=first_deferred_at)

    def list(
        self,
        message: Any,
        refusal: Refusal,
        *,
        delay: int,
        now: int,
        deferrals: int,
        first_deferred_at: int,
    ) -> DeferredJob:
        """Record in the index (and tell ``on_defer``, and log) that ``message`` waits for
        ``refusal.service`` ``delay`` ms from ``now``; the caller has enqueued what runs then."""
        eta = now + delay
        deferred = DeferredJob(
            message_id=message.message_id,
            actor=message.actor_name,
            queue=message.queue_name,
            service=refusal.service,
            eta=eta,
            deferrals=deferrals,
            first_deferred_at=first_deferred_at,
            reason=refusal.reason,
        )
        previous = message.options.get(DEFERRED_BY)
        if previous and previous != refusal.service:
            self.forget(previous, message.message_id)
        self._safely("index", self.index.add, deferred)
        if self.on_defer is not None:
            self._safely("on_defer", self.on_defer, message, deferred)
        log.warning(
            refusal.reason,
            event_name="job.deferred",
            circuit_breaker=refusal.service,
            state=refusal.state,
            retry_after=round(refusal.retry_after, 3),
            delay=round(delay / 1000, 3),
            message_id=message.message_id,
            actor=message.actor_name,
            service=refusal.service,
            deferrals=deferrals,
        )
        return deferred

    def forget(self, service: str, message_id: str) -> None:
        """Take a message off the deferred index (it runs, or is dead-lettered)."""
        self._safely("index", self.index.remove, service, message_id)

    def delay_ms(self, retry_after: float) -> int:
        """``retry_after`` plus jitter, in milliseconds, rounded up and within the broker's
        longest delay: a deferred message never comes back before ``retry_after``."""
        jitter = random.uniform(0.0, min(self.max_jitter, self.jitter_ratio * retry_after))
        return min(int(-(-(retry_after + jitter) * 1000 // 1)), MAX_DELAY)

    def budget(self, broker: dramatiq.Broker, message: Any) -> int:
        """The deferral budget of ``message`` in milliseconds: message, actor, default."""
        actor = broker.get_actor(message.actor_name)
        return message.options.get("max_deferral") or actor.options.get(
            "max_deferral", self.max_deferral
        )

    def close(self) -> None:
        """Write what the index buffers."""
        self.index.close()

    @staticmethod
    def _safely(what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run a side record of a deferral; its failure is logged, never the message's."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - bookkeeping must never fail a message
            log.warning(
                f"Deferral bookkeeping ({what}) failed: {type(exc).__name__}: {exc}",
                event_name="job.bookkeeping_failed",
                what=what,
            )
