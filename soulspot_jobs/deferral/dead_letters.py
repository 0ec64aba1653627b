"""Dead-lettered messages on Dramatiq's Redis broker: list them with their reason, requeue or
delete them.

Dramatiq 2.2's Redis broker keeps a queue's dead letters in two keys (see its ``dispatch.lua``):
the sorted set ``<namespace>:<queue>.XQ`` (Redis message id -> epoch milliseconds at which the
message was dead-lettered) and the hash ``<namespace>:<queue>.XQ.msgs`` (Redis message id -> the
encoded message as it was last enqueued). Maintenance deletes entries older than the broker's
``dead_message_ttl`` (7 days by default).

A requeue takes the message out of the dead-letter queue (only one of two concurrent requeues
wins) and enqueues a fresh copy through the broker, as any producer would: same message id and
arguments, no retries counted, no traceback, no eta, no circuit-breaker history.

Each dead letter's reason: the one the project's Retries recorded when it dead-lettered the message
(:class:`~soulspot_jobs.deferral.reasons.DeadLetterReasons`), else what the message itself says
(Dramatiq's retries ran out, with the last line of its traceback). A payload no encoder can read
is listed too, with why it cannot be read; it cannot be requeued.

*Malformed* dead letters (:attr:`DeadLetter.malformed`: a payload no encoder can read, or a
message the project's Retries dead-lettered as ``malformed: ...``, naming no job record or with
arguments its actor does not take) would come straight back if requeued: :meth:`requeue_all`
leaves them where they are and says so. A delete takes a message out of its dead-letter queue
for good, with its recorded reason.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name
from dramatiq.errors import DecodeError

from soulspot_jobs.deferral.options import OPTION_PREFIX
from soulspot_jobs.deferral.reasons import DeadLetterReasons
from soulspot_jobs.errors import SoulspotJobsError

#: Suffix of a dead-letter queue's sorted set, and of its messages hash after it.
XQ_SUFFIX, MESSAGES_SUFFIX = ".XQ", ".msgs"
#: Message options a requeued message starts without: Dramatiq's retry state and broker
#: bookkeeping, and every circuit-breaker option (deferral history, dead-letter reason).
DROPPED_OPTIONS = frozenset(
    {"retries", "traceback", "requeue_timestamp", "eta", "redis_message_id"}
)
#: How the project's Retries begins the reason of a message that cannot even start.
MALFORMED_PREFIX = "malformed: "


class DeadLettersUnsupported(SoulspotJobsError):
    """The broker keeps its dead letters elsewhere than in Redis (RabbitMQ)."""


class DeadLetterNotFound(SoulspotJobsError, LookupError):
    """No dead-lettered message has the id given (or another requeue took it first)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered message."""

    message_id: str
    actor: str
    #: The queue it came from (never a delay queue).
    queue: str
    #: Epoch milliseconds at which it was dead-lettered.
    dead_lettered_at: int
    reason: str
    #: Its id in the broker's keys (the member of the ``.XQ`` set).
    redis_message_id: str
    #: The message; ``None`` when its payload cannot be decoded.
    message: dramatiq.Message | None

    @property
    def malformed(self) -> bool:
        """Whether requeueing it could only dead-letter it again: its payload cannot be decoded,
        or it was dead-lettered as malformed (no job record, wrong arguments)."""
        return self.message is None or self.reason.startswith(MALFORMED_PREFIX)

    @property
    def why_malformed(self) -> str:
        """Why it is malformed, without the ``malformed: `` prefix (``""`` when it is not)."""
        if not self.malformed:
            return ""
        return self.reason.removeprefix(MALFORMED_PREFIX)

    def as_dict(self) -> dict[str, object]:
        return {
            "message_id": self.message_id,
            "actor": self.actor,
            "queue": self.queue,
            "dead_lettered_at": self.dead_lettered_at,
            "reason": self.reason,
            "args": list(self.message.args) if self.message is not None else None,
        }


@dataclass(frozen=True, slots=True)
class RequeueAll:
    """What :meth:`DeadLetters.requeue_all` did: the dead letters put back on their queues, and
    the malformed ones left in the dead letters (see :attr:`DeadLetter.malformed`)."""

    requeued: list[DeadLetter]
    skipped: list[DeadLetter]


def reason_of(message: dramatiq.Message, recorded: str | None = None) -> str:
    """Why ``message`` was dead-lettered: the ``recorded`` reason when the project's Retries
    gave one, else Dramatiq's retries ran out (with the last line of the last traceback)."""
    if recorded:
        return recorded
    retries = message.options.get("retries", 0)
    lines = str(message.options.get("traceback") or "").strip().splitlines()
    error = f": {lines[-1].strip()}" if lines else ""
    return f"retries exhausted after {retries} retries{error}"


def fresh_copy(message: dramatiq.Message) -> dramatiq.Message:
    """``message`` as a new enqueue would make it: on its own queue, timestamped now, with none
    of :data:`DROPPED_OPTIONS` and no ``circuit_breaker_*`` option."""
    options = {
        name: value
        for name, value in message.options.items()
        if name not in DROPPED_OPTIONS and not name.startswith(OPTION_PREFIX)
    }
    return dataclasses.replace(
        message,
        queue_name=q_name(message.queue_name),
        message_timestamp=int(time.time() * 1000),
        options=options,
    )


class DeadLetters:
    """The dead-letter queues of ``broker`` (a :class:`RedisBroker`)."""

    def __init__(
        self,
        broker: RedisBroker,
        *,
        reasons: DeadLetterReasons | None = None,
        on_requeue: Callable[[DeadLetter], None] | None = None,
        on_delete: Callable[[DeadLetter], None] | None = None,
    ) -> None:
        if not isinstance(broker, RedisBroker):
            raise DeadLettersUnsupported(
                "dead letters are read from a Redis broker; with BROKER_URL on RabbitMQ they are "
                "in RabbitMQ's <queue>.XQ queues: use RabbitMQ's tools"
            )
        self.broker = broker
        self.client = broker.client
        self.namespace = broker.namespace
        self.reasons = reasons or DeadLetterReasons()
        #: Called with each dead letter once it is back on its queue (job records use it).
        self.on_requeue = on_requeue
        #: Called with each dead letter once it is deleted (job records use it).
        self.on_delete = on_delete

    def queues(self) -> list[str]:
        """Names of the queues that have a dead-letter queue in Redis."""
        prefix = f"{self.namespace}:"
        found = set()
        for key in self.client.scan_iter(match=f"{prefix}*{XQ_SUFFIX}", count=1000):
            key = _text(key)
            found.add(key[len(prefix) : -len(XQ_SUFFIX)])
        return sorted(found)

    def counts(self) -> dict[str, int]:
        """Dead-lettered messages per queue (queues with none left out)."""
        queues = self.queues()
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            pipe.zcard(self._xq(queue))
        return {q: n for q, n in zip(queues, pipe.execute() if queues else [], strict=True) if n}

    def list(self) -> list[DeadLetter]:
        """Every dead-lettered message, oldest first."""
        letters = []
        for queue in self.queues():
            entries = self.client.zrange(self._xq(queue), 0, -1, withscores=True)
            if not entries:
                continue
            ids = [_text(member) for member, _ in entries]
            raws = self.client.hmget(self._xq(queue) + MESSAGES_SUFFIX, ids)
            found = [
                (_letter(queue, redis_id, int(score), raw), raw)
                for (_, score), redis_id, raw in zip(entries, ids, raws, strict=True)
                if raw is not None
            ]
            recorded = self.reasons.get_many(
                [letter.message_id for letter, _ in found if letter.message is not None]
            )
            for letter, _ in found:
                if letter.message is not None:
                    reason = reason_of(letter.message, recorded.get(letter.message_id))
                    letter = dataclasses.replace(letter, reason=reason)
                letters.append(letter)
        return sorted(letters, key=lambda letter: letter.dead_lettered_at)

    def requeue(self, message_id: str) -> DeadLetter:
        """Move the dead letter ``message_id`` (Dramatiq's or the broker's id) back onto its
        queue as a fresh message; raise :class:`DeadLetterNotFound` when there is none."""
        letter = self._find(message_id)
        self._requeue(letter)
        return letter

    def requeue_all(self) -> RequeueAll:
        """Requeue every dead letter but the malformed ones, which stay where they are; returns
        both (a dead letter another process takes first is in neither)."""
        done, skipped = [], []
        for letter in self.list():
            if letter.malformed:
                skipped.append(letter)
                continue
            try:
                self._requeue(letter)
            except DeadLetterNotFound:
                continue
            done.append(letter)
        return RequeueAll(done, skipped)

    def delete(self, message_id: str) -> DeadLetter:
        """Delete the dead letter ``message_id`` (Dramatiq's or the broker's id) for good, and
        its recorded reason; raise :class:`DeadLetterNotFound` when there is none (or another
        process took it first). Returns what was deleted."""
        letter = self._find(message_id)
        self._delete(letter)
        return letter

    def delete_all(self) -> list[DeadLetter]:
        """Delete every dead letter; returns those deleted (others may take some first)."""
        done = []
        for letter in self.list():
            try:
                self._delete(letter)
            except DeadLetterNotFound:
                continue
            done.append(letter)
        return done

    def _find(self, message_id: str) -> DeadLetter:
        for letter in self.list():
            if message_id in (letter.message_id, letter.redis_message_id):
                return letter
        raise DeadLetterNotFound(f"no dead-lettered message {message_id!r}")

    def _delete(self, letter: DeadLetter) -> None:
        xq = self._xq(letter.queue)
        if not self.client.zrem(xq, letter.redis_message_id):
            raise DeadLetterNotFound(f"dead letter {letter.message_id!r} was taken meanwhile")
        self.client.hdel(xq + MESSAGES_SUFFIX, letter.redis_message_id)
        _forget_reason(self.reasons, letter.message_id)
        if self.on_delete is not None:
            self.on_delete(letter)

    def _requeue(self, letter: DeadLetter) -> None:
        if letter.message is None:
            raise DeadLetterNotFound(
                f"dead letter {letter.message_id!r} cannot be decoded, so it cannot be requeued"
            )
        xq = self._xq(letter.queue)
        if not self.client.zrem(xq, letter.redis_message_id):
            raise DeadLetterNotFound(f"dead letter {letter.message_id!r} was taken meanwhile")
        if self.on_requeue is not None:
            # Before the enqueue: a worker may run the message the moment it is enqueued, and
            # must find its job record out of ``failed`` by then.
            self.on_requeue(letter)
        try:
            self.broker.enqueue(fresh_copy(letter.message))
        except BaseException:
            self.client.zadd(xq, {letter.redis_message_id: letter.dead_lettered_at})
            raise
        self.client.hdel(xq + MESSAGES_SUFFIX, letter.redis_message_id)

    def _xq(self, queue: str) -> str:
        return f"{self.namespace}:{queue}{XQ_SUFFIX}"


def _forget_reason(reasons: DeadLetterReasons, message_id: str) -> None:
    """Drop the reason kept for ``message_id``'s dead letter, in Redis or in memory."""
    if reasons.client is not None:
        reasons.client.delete(reasons.keys.dead_letter_reason(message_id))
        return
    with reasons._lock:
        reasons._memory.pop(message_id, None)


def _letter(queue: str, redis_id: str, at: int, raw: bytes) -> DeadLetter:
    """The dead letter stored as ``raw``; its reason is filled in by the caller."""
    try:
        message = dramatiq.Message.decode(raw)
    except DecodeError as exc:
        return DeadLetter(
            message_id=redis_id,
            actor="?",
            queue=queue,
            dead_lettered_at=at,
            reason=f"undecodable: {exc.error or exc}",
            redis_message_id=redis_id,
            message=None,
        )
    return DeadLetter(
        message_id=message.message_id,
        actor=message.actor_name,
        queue=queue,
        dead_lettered_at=at,
        reason="",
        redis_message_id=redis_id,
        message=message,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
