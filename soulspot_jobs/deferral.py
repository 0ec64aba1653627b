"""Deferring and dead-lettering messages: what the middleware does once it has decided.

A deferral replaces a message by a delayed copy carrying its history (how often, since when, by
which service) and records it in the deferred index; a message past its deferral budget, or one
its job cannot start on, goes to the dead-letter queue with a reason instead. Nothing here
decides *whether* to defer: :mod:`soulspot_jobs.middleware` does, once per message, in its hooks.

The dead-letter queue is reached through a *hop*: the message is re-enqueued marked with its
reason and a hop id, and the worker that receives it dead-letters it, so the reason is part of the
dead-lettered message on every broker (brokers dead-letter a message as it was enqueued). Once the
hop has been dead-lettered, its id is remembered; a copy arriving again with the same hop id was
requeued from the dead-letter queue (by ``soulspot-jobs dead-letters requeue`` or any other tool)
and runs, with a fresh deferral budget.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
import structlog

from soulspot_jobs.deferred import DeferredIndex, DeferredJob

log = structlog.get_logger("soulspot_jobs.middleware")

#: Default deferral budget in milliseconds: a message deferred for longer is dead-lettered.
DEFAULT_MAX_DEFERRAL = 24 * 60 * 60 * 1000
#: Jitter added to a deferral, as a fraction of its ``retry_after`` ...
DEFAULT_JITTER_RATIO = 0.1
#: ... and never more than this many seconds.
DEFAULT_MAX_JITTER = 5.0
#: The Redis broker refuses delays of 7 days or more (milliseconds).
MAX_DELAY = 7 * 24 * 60 * 60 * 1000 - 1
#: Seconds a dead-lettered hop is remembered (Dramatiq keeps dead letters 7 days by default).
HOP_MEMORY = 7 * 24 * 60 * 60

#: Message options carrying a deferred message's history.
DEFERRALS = "circuit_breaker_deferrals"
FIRST_DEFERRED_AT = "circuit_breaker_first_deferred_at"
DEFERRED_BY = "circuit_breaker_service"
#: Set on a message on its way to the dead-letter queue: why it is there ...
DEAD_LETTER_REASON = "circuit_breaker_dead_letter_reason"
#: ... and which hop took it there (a requeued dead letter arrives with a known hop id).
DEAD_LETTER_HOP = "circuit_breaker_dead_letter_hop"
#: Every option this module writes; a requeued dead letter arrives without any of them.
HISTORY_OPTIONS = (DEFERRALS, FIRST_DEFERRED_AT, DEFERRED_BY, DEAD_LETTER_REASON, DEAD_LETTER_HOP)


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


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """A message sent to the dead-letter queue, and why."""

    message_id: str
    service: str
    reason: str


class HopMemory:
    """Which dead-letter hops have reached the dead-letter queue (in Redis, or in memory).

    Redis keys ``<prefix>:<hop id>`` expire after :data:`HOP_MEMORY` seconds.
    """

    def __init__(self, client: redis.Redis | None = None, *, prefix: str = "soulspot:hops") -> None:
        self.client = client
        self.prefix = prefix
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def remember(self, hop: str) -> None:
        if self.client is None:
            with self._lock:
                self._seen.add(hop)
            return
        self.client.set(f"{self.prefix}:{hop}", 1, ex=HOP_MEMORY)

    def seen(self, hop: str) -> bool:
        if self.client is None:
            with self._lock:
                return hop in self._seen
        return bool(self.client.exists(f"{self.prefix}:{hop}"))


class Deferrals:
    """Replaces messages by delayed copies, or sends them to the dead-letter queue with a reason.

    Parameters:
      index: where deferred messages are listed; its errors never affect a message.
      hops: memory of dead-letter hops, to tell a requeued dead letter from a fresh hop.
      on_defer: called with ``(message, deferred_job)`` after each deferral; errors are logged.
      max_deferral: default deferral budget in milliseconds (actor option ``max_deferral``).
      jitter_ratio, max_jitter: jitter added to each delay: uniform in
        ``[0, min(max_jitter, jitter_ratio * retry_after)]`` seconds, never negative.
    """

    def __init__(
        self,
        index: DeferredIndex,
        hops: HopMemory,
        *,
        on_defer: Callable[[Any, DeferredJob], None] | None = None,
        max_deferral: int = DEFAULT_MAX_DEFERRAL,
        jitter_ratio: float = DEFAULT_JITTER_RATIO,
        max_jitter: float = DEFAULT_MAX_JITTER,
    ) -> None:
        self.index = index
        self.hops = hops
        self.on_defer = on_defer
        self.max_deferral = max_deferral
        self.jitter_ratio = jitter_ratio
        self.max_jitter = max_jitter

    def defer(
        self, broker: dramatiq.Broker, message: Any, refusal: Refusal
    ) -> DeferredJob | DeadLettered:
        """Enqueue a delayed copy of ``message``; past its budget, dead-letter it instead.

        Raises whatever the broker raises when the copy cannot be enqueued: the caller must
        then keep the original.
        """
        now = now_ms()
        options = message.options
        deferrals = options.get(DEFERRALS, 0) + 1
        first_deferred_at = options.get(FIRST_DEFERRED_AT) or now
        budget = self._budget(broker, message)
        if now - first_deferred_at >= budget:
            reason = (
                f"deferred {deferrals - 1} times over {(now - first_deferred_at) / 1000:.1f} s "
                f"by circuit breaker {refusal.service}, past the budget of {budget / 1000:.1f} s"
            )
            return self.dead_letter(broker, message, refusal.service, reason, state=refusal.state)
        delay = min(self.delay_ms(refusal.retry_after), MAX_DELAY)
        history = {
            DEFERRALS: deferrals,
            FIRST_DEFERRED_AT: first_deferred_at,
            DEFERRED_BY: refusal.service,
        }
        broker.enqueue(message.copy(options=history), delay=delay)
        deferred = DeferredJob(
            message_id=message.message_id,
            actor=message.actor_name,
            queue=message.queue_name,
            service=refusal.service,
            eta=now + delay,
            deferrals=deferrals,
            first_deferred_at=first_deferred_at,
            reason=refusal.reason,
        )
        previous = options.get(DEFERRED_BY)
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

    def dead_letter(
        self, broker: dramatiq.Broker, message: Any, service: str, reason: str, *, state: str
    ) -> DeadLettered:
        """Send ``message`` to the dead-letter queue with ``reason``, through a hop.

        Raises whatever the broker raises when the hop cannot be enqueued.
        """
        hop = uuid.uuid4().hex
        broker.enqueue(
            message.copy(
                options={DEAD_LETTER_REASON: reason, DEAD_LETTER_HOP: hop, DEFERRED_BY: service}
            )
        )
        self.forget(message.options.get(DEFERRED_BY, service), message.message_id)
        log.error(
            f"Message {message.message_id} goes to the dead-letter queue: {reason}",
            event_name="job.dead_lettered",
            circuit_breaker=service,
            state=state,
            message_id=message.message_id,
            actor=message.actor_name,
            reason=reason,
        )
        return DeadLettered(message.message_id, service, reason)

    def is_hop(self, message: Any) -> bool:
        """Whether ``message`` is on its way to the dead-letter queue (not a requeued one)."""
        options = message.options
        if not options.get(DEAD_LETTER_REASON):
            return False
        hop = options.get(DEAD_LETTER_HOP)
        if hop is None:
            return True
        try:
            return not self.hops.seen(hop)
        except redis.RedisError:
            return True  # when in doubt, the dead-letter queue loses nothing

    def arrived_in_dead_letters(self, message: Any) -> None:
        """Remember that ``message``'s hop reached the dead-letter queue."""
        hop = message.options.get(DEAD_LETTER_HOP)
        if hop is not None:
            self._safely("hop memory", self.hops.remember, hop)

    def forget(self, service: str, message_id: str) -> None:
        """Take a message off the deferred index (it runs, or is dead-lettered)."""
        self._safely("index", self.index.remove, service, message_id)

    def delay_ms(self, retry_after: float) -> int:
        jitter = random.uniform(0.0, min(self.max_jitter, self.jitter_ratio * retry_after))
        # Rounded up: the message must never come back before ``retry_after``.
        return int(-(-(retry_after + jitter) * 1000 // 1))

    def _budget(self, broker: dramatiq.Broker, message: Any) -> int:
        actor = broker.get_actor(message.actor_name)
        return message.options.get("max_deferral") or actor.options.get(
            "max_deferral", self.max_deferral
        )

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
