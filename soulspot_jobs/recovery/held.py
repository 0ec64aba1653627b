"""``RecoveringRedisBroker``: a Redis broker that knows which fetched messages its process holds.

Dramatiq's Redis broker keeps every message a process fetched in that process's ack set
(``<namespace>:__acks__.<broker id>.<queue>``) until it is acknowledged. Dramatiq only ever
re-reads the ack sets of *dead* processes, so a message a live process lost from memory stays
stranded while the process lives. That happens when a consumer restarts after a connection
error (Redis restarted, or the network failed): the consumer's prefetched messages and, for a
delay queue, every delayed message it held are dropped from memory, and after a Redis crash with
an append-only file, acknowledgements of the last second may be undone.

This broker keeps, per queue, the Redis ids of the messages fetched and not yet acknowledged,
nacked or requeued (updated under one lock together with each fetch, so it never lags behind
the ack set), drops from it what a restarting consumer lost, and requeues on request every
member of its own ack sets it does not hold: the *strays*. It is a drop-in ``RedisBroker``.

Two more gaps of Dramatiq's Redis broker while Redis is away are closed here:

* A message whose follow-up could not be enqueued (its retry, its deferred copy, its next step)
  would be acknowledged all the same and the job lost, or, when the failed enqueue made it fail
  (a deferral the broker refused), dead-lettered once Redis is back while its job waits for
  ever. Its acknowledgement or rejection is withheld instead: the message stays in the ack set,
  becomes a stray and runs again once Redis is back. Only connection errors count (Redis
  unavailable); a command Redis refuses fails the message as usual.
* A consumer that fails to requeue its delayed messages on its way to a restart would die of the
  raw ``redis.ConnectionError``; it is reported as Dramatiq's ``ConnectionClosed``, which the
  consumer survives.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from dramatiq.errors import ConnectionClosed

log = structlog.get_logger("soulspot_jobs.recovery")


#: How Dramatiq's JSON encoder writes the option, followed by the 36-character id.
_ID_MARK = b'"redis_message_id":"'
_ID_LENGTH = 36


def _redis_id(raw: bytes) -> str:
    """The ``redis_message_id`` option of one encoded message, found without decoding it all
    when the key occurs once (inside a JSON string its quotes would be escaped)."""
    if raw.count(_ID_MARK) == 1:
        start = raw.index(_ID_MARK) + len(_ID_MARK)
        if raw[start + _ID_LENGTH : start + _ID_LENGTH + 1] == b'"':
            return raw[start : start + _ID_LENGTH].decode()
    return json.loads(raw)["options"]["redis_message_id"]


def _redis_ids(raw_messages: Iterable[bytes | None]) -> set[str]:
    """The ``redis_message_id`` option of each encoded message (``None`` entries skipped)."""
    return {_redis_id(raw) for raw in raw_messages if raw}


class RecoveringRedisBroker(RedisBroker):
    """A :class:`RedisBroker` that can requeue the messages its own ack sets hold in vain."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._held_lock = threading.Lock()
        #: Queue name -> Redis ids fetched by this process and not yet acked, nacked or requeued.
        self._held: defaultdict[str, set[str]] = defaultdict(set)
        #: The current consumer of each (thread, queue): a second one means a restart.
        self._consumers: dict[tuple[int, str], Any] = {}
        #: Set when a consumer restarted: its lost messages are strays until requeued.
        self.strays_suspected = threading.Event()
        #: Redis ids of messages whose acknowledgement must not be sent (see the module doc).
        self._withheld: set[str] = set()
        #: Per worker thread: the Redis id of the message it is processing.
        self._processing = threading.local()

    def processing(self, message: Any | None) -> None:
        """Note the message the calling worker thread processes now (``None``: done)."""
        self._processing.redis_id = (
            None if message is None else message.options.get("redis_message_id")
        )

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        try:
            return super().enqueue(message, delay=delay)
        except (redis.ConnectionError, redis.TimeoutError):
            current = getattr(self._processing, "redis_id", None)
            if current is not None:
                with self._held_lock:
                    self._withheld.add(current)
            raise

    # -- the dispatch commands that move messages in and out of this process's ack sets --

    def do_fetch(self, queue_name: str, prefetch: int) -> list[bytes | None]:
        with self._held_lock:
            raw_messages = self._dispatch("fetch")(queue_name, prefetch)
            self._held[queue_name].update(_redis_ids(raw_messages))
        return raw_messages

    def do_ack(self, queue_name: str, redis_id: str) -> Any:
        if self._withholds(queue_name, redis_id, "acknowledged"):
            return None
        reply = self._dispatch("ack")(queue_name, redis_id)
        self._forget(queue_name, (redis_id,))
        return reply

    def do_nack(self, queue_name: str, redis_id: str) -> Any:
        if self._withholds(queue_name, redis_id, "dead-lettered"):
            return None
        reply = self._dispatch("nack")(queue_name, redis_id)
        self._forget(queue_name, (redis_id,))
        return reply

    def _withholds(self, queue_name: str, redis_id: str, outcome: str) -> bool:
        """Whether the ack or nack of ``redis_id`` is withheld (see the module doc); if so, the
        message is a stray from now on. Raises ``ConnectionClosed`` while Redis is still away,
        so that Dramatiq retries at its own pace (no busy loop) until Redis is back."""
        with self._held_lock:
            withheld = redis_id in self._withheld
            self._withheld.discard(redis_id)
        if not withheld:
            return False
        try:
            self.client.ping()
        except redis.RedisError as exc:
            with self._held_lock:
                self._withheld.add(redis_id)
            raise ConnectionClosed(exc) from None
        log.warning(
            f"Message (Redis id {redis_id}) on {queue_name} not {outcome}: a message it sent "
            "could not be enqueued (Redis unavailable); it runs again once Redis is back",
            event_name="recovery.ack_withheld",
        )
        self._forget(queue_name, (redis_id,))
        self.strays_suspected.set()
        return True

    def do_requeue(self, queue_name: str, *redis_ids: str) -> Any:
        try:
            reply = self._dispatch("requeue")(queue_name, *redis_ids)
        except redis.ConnectionError as exc:  # left in the ack set: strays, requeued later
            raise ConnectionClosed(exc) from None
        self._forget(queue_name, redis_ids)
        return reply

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        """A consumer for ``queue_name``; when it replaces one of the same thread, what the old
        one held only in its own memory is no longer held."""
        consumer = super().consume(queue_name, prefetch, timeout)
        key = (threading.get_ident(), queue_name)
        previous = self._consumers.get(key)
        self._consumers[key] = consumer
        if previous is not None:
            self._forget_what_was_lost(queue_name, previous)
        return consumer

    def forget_prefetched(self, consumers: Iterable[Any]) -> None:
        """The worker stopped: what its consumers had prefetched will never be processed."""
        for thread in consumers:
            consumer = getattr(thread, "consumer", None)
            if consumer is not None:
                self._forget(thread.queue_name, _redis_ids(consumer.message_cache))

    # -- strays ---------------------------------------------------------------------------

    def ack_set_key(self, queue_name: str, broker_id: str | None = None) -> str:
        """The Redis key of ``broker_id``'s (default: this process's) ack set of a queue."""
        return f"{self.namespace}:__acks__.{broker_id or self.broker_id}.{queue_name}"

    def all_queue_names(self) -> list[str]:
        """Every declared queue and its delay queue."""
        names = sorted(self.get_declared_queues())
        return [name for queue in names for name in (queue, dq_name(queue))]

    def held_count(self) -> int:
        with self._held_lock:
            return sum(len(ids) for ids in self._held.values())

    def requeue_strays(self) -> int:
        """Requeue every message in this process's ack sets that it no longer holds.

        The ack sets are read under the lock every fetch takes, so a message fetched a moment
        ago is never mistaken for a stray. Returns how many messages went back to their queues.
        """
        self.strays_suspected.clear()
        queues = self.all_queue_names()
        with self._held_lock:
            pipe = self.client.pipeline(transaction=False)
            for queue_name in queues:
                pipe.smembers(self.ack_set_key(queue_name))
            members = pipe.execute()
            strays = {
                queue_name: {_text(m) for m in found} - self._held[queue_name]
                for queue_name, found in zip(queues, members, strict=True)
            }
        requeued = 0
        for queue_name, redis_ids in strays.items():
            if redis_ids:
                self.do_requeue(queue_name, *sorted(redis_ids))
                requeued += len(redis_ids)
        return requeued

    # -- internals ----------------------------------------------------------------------

    def _forget(self, queue_name: str, redis_ids: Iterable[str]) -> None:
        with self._held_lock:
            self._held[queue_name].difference_update(redis_ids)

    def _forget_what_was_lost(self, queue_name: str, previous: Any) -> None:
        """A consumer restarted: its prefetched messages are gone from memory, and so is a
        delay queue's every delayed message unless its thread still has them queued."""
        lost = _redis_ids(getattr(previous, "message_cache", []))
        with self._held_lock:
            held = self._held[queue_name]
            held.difference_update(lost)
            if queue_name.endswith(".DQ"):
                waiting = getattr(threading.current_thread(), "delay_queue", None)
                kept = set()
                if waiting is not None:
                    with waiting.mutex:
                        kept = {item.message.options["redis_message_id"] for item in waiting.queue}
                held.intersection_update(kept)
        self.strays_suspected.set()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
