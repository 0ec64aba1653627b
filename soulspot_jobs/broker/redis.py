"""``RecoveringRedisBroker``: a Redis broker that knows which fetched messages its process holds.

Dramatiq's Redis broker keeps every message a process fetched in that process's ack set
(``<namespace>:__acks__.<broker id>.<queue>``) until it is acknowledged. Dramatiq only ever
re-reads the ack sets of *dead* processes, so a message a live process lost from memory stays
stranded while the process lives. That happens when a consumer restarts after a connection
error (Redis restarted, or the network failed): the consumer's prefetched messages and, for a
delay queue, every delayed message it held are dropped from memory, and after a Redis crash with
an append-only file, acknowledgements of the last second may be undone.

This broker keeps, per queue, the Redis ids of the messages fetched and not yet acknowledged,
nacked or requeued, drops from it what a restarting consumer lost, and requeues on request every
member of its own ack sets it does not hold: the *strays*. It is a drop-in ``RedisBroker``. The
bookkeeping takes no lock on the message path (each set operation is atomic under the GIL); a
look for strays reads the ack sets, then waits for the fetches already begun to be noted, so
that a message fetched a moment ago, not yet noted as held, is never mistaken for a stray.

Two more gaps of Dramatiq's Redis broker while Redis is away are closed here:

* A message whose follow-up could not be enqueued (its retry, its deferred copy, its next step)
  would be acknowledged all the same and the job lost, or, when the failed enqueue made it fail
  (a deferral the broker refused), dead-lettered once Redis is back while its job waits for
  ever. Its acknowledgement or rejection is withheld instead: the message stays in the ack set,
  becomes a stray and runs again once Redis is back. Only Redis away or refusing writes for a
  while counts (below); a command Redis refuses for what it is fails the message as usual.
* Redis refusing writes for a while (``maxmemory`` reached under ``noeviction``, a disk too
  full for the append-only file, a replica, a server loading) is treated as Redis away, not as
  a failure: a consumer's fetch, acknowledgement, requeue, or a delay queue's move of a due
  message, failing so is reported as Dramatiq's ``ConnectionClosed``, which its consumer
  threads survive (they retry an acknowledgement, and restart after a failed fetch), where the
  raw error killed the thread for good. A consumer restarting again and again backs off (1, 2,
  4 ... 30 s more) and says so in a few lines.

Messages are read with Dramatiq's encoder (``dramatiq.set_encoder``): JSON, pickle or any other.
A fetched payload the encoder cannot decode would crash Dramatiq's consumer on every restart; it
is moved to the queue's dead letters at once instead, and logged with why it cannot be read.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import redis
import structlog
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from dramatiq.errors import ConnectionClosed, DecodeError

log = structlog.get_logger("soulspot_jobs.recovery")


#: Errors that mean Redis cannot take writes now but will again: unreachable, or refusing them
#: (``maxmemory`` reached under ``noeviction``, a disk too full for the append-only file, a
#: replica, a server loading its data). Their messages wait; nothing is failed over them.
_REFUSALS_THAT_PASS = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
)
#: The same refusals as redis-py reports them in a plain ``ResponseError``: a reply's error
#: code, also where a Lua script passes it on (``... @user_script:58: -MISCONF ...``).
_PASSING_CODES = re.compile(r"(?:^|[-: ])(?:MISCONF|OOM|READONLY|LOADING|MASTERDOWN|NOREPLICAS)\b")


def redis_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis is away or refuses writes for a while, rather than that the
    command itself is wrong."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, *_REFUSALS_THAT_PASS)):
        return True
    return isinstance(exc, redis.ResponseError) and _PASSING_CODES.search(str(exc)) is not None


#: Most seconds a restarting consumer waits beyond Dramatiq's own 3 s.
RESTART_BACKOFF_MAX = 30.0
#: Seconds a look for strays waits for the fetches begun before it to be noted.
FETCH_WAIT = 5.0
#: How Dramatiq's JSON encoder writes the option, followed by the 36-character id.
_ID_MARK = b'"redis_message_id":"'
_ID_LENGTH = 36


def _redis_id(raw: bytes) -> str:
    """The ``redis_message_id`` option of one encoded message.

    With Dramatiq's JSON encoder the id is found without decoding the message, when its key
    occurs once (inside a JSON string its quotes would be escaped); any other payload is decoded
    with the configured encoder. Raises :class:`DecodeError` when it cannot be decoded.
    """
    if raw.count(_ID_MARK) == 1:
        start = raw.index(_ID_MARK) + len(_ID_MARK)
        if raw[start + _ID_LENGTH : start + _ID_LENGTH + 1] == b'"':
            return raw[start : start + _ID_LENGTH].decode()
    return Message.decode(raw).options["redis_message_id"]


def _redis_ids(raw_messages: Iterable[bytes | None]) -> set[str]:
    """The ``redis_message_id`` of each decodable message (``None`` entries skipped)."""
    found = set()
    for raw in raw_messages:
        if raw:
            try:
                found.add(_redis_id(raw))
            except DecodeError:
                continue
    return found


class RecoveringRedisBroker(RedisBroker):
    """A :class:`RedisBroker` that can requeue the messages its own ack sets hold in vain."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        #: Queue name -> Redis ids fetched by this process and not yet acked, nacked or requeued.
        self._held: defaultdict[str, set[str]] = defaultdict(set)
        #: Guards the two fetch counters below (never held across a Redis command).
        self._fetches_noted = threading.Condition()
        #: Queue name -> fetches begun, and fetches whose messages are noted as held.
        self._fetches_begun: Counter[str] = Counter()
        self._fetches_done: Counter[str] = Counter()
        #: The current consumer of each (thread, queue): a second one means a restart.
        self._consumers: dict[tuple[int, str], Any] = {}
        #: Set when a consumer restarted: its lost messages are strays until requeued.
        self.strays_suspected = threading.Event()
        #: Redis ids of messages whose acknowledgement must not be sent (see the module doc).
        self._withheld: set[str] = set()
        #: Per worker thread: the Redis id of the message it is processing.
        self._processing = threading.local()
        #: Fetched payloads the encoder cannot decode, with their Redis ids.
        self._unreadable: dict[bytes, str] = {}
        #: Restarts in a row of each (thread, queue)'s consumer, without a fetch in between.
        self._restarts: dict[tuple[int, str], int] = {}
        #: Set when the worker stops: no consumer waits to restart any more.
        self._stopping = threading.Event()

    def processing(self, message: Any | None) -> None:
        """Note the message the calling worker thread processes now (``None``: done)."""
        self._processing.message = message

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        try:
            return super().enqueue(message, delay=delay)
        except redis.RedisError as exc:
            if not redis_unavailable(exc):
                raise
            current = getattr(self._processing, "message", None)
            if current is not None:
                self._withheld.add(current.options["redis_message_id"])
            if self._in_consumer_thread():
                # a delay queue's consumer moving a due message: it restarts on this, and
                # the message, still in its ack set, is a stray requeued once Redis takes it
                raise ConnectionClosed(exc) from None
            raise

    # -- the dispatch commands that move messages in and out of this process's ack sets --

    def do_fetch(self, queue_name: str, prefetch: int) -> list[bytes | None]:
        with self._fetches_noted:
            self._fetches_begun[queue_name] += 1
        try:
            fetched = self._dispatch_or_closed("do_fetch", queue_name, prefetch)
            self._restarts.pop((threading.get_ident(), queue_name), None)
            held = self._held[queue_name]
            for raw in fetched:
                if not raw:
                    continue
                try:
                    held.add(_redis_id(raw))
                except DecodeError:
                    redis_id = self._find_unreadable(queue_name, raw)
                    if redis_id is not None:
                        held.add(redis_id)
                        self._unreadable[raw] = redis_id
            return fetched
        finally:
            with self._fetches_noted:
                self._fetches_done[queue_name] += 1
                self._fetches_noted.notify_all()

    def fetch_readable(self, queue_name: str, prefetch: int) -> list[bytes | None]:
        """:meth:`do_fetch`, less the payloads the encoder cannot decode: those are moved to
        the dead letters at once (what a consumer fetches through)."""
        fetched = self.do_fetch(queue_name, prefetch)
        if not self._unreadable:
            return fetched
        readable = []
        for raw in fetched:
            if raw in self._unreadable:
                self.dead_letter_unreadable(queue_name, raw, _decode_error(raw))
            else:
                readable.append(raw)
        return readable

    def _find_unreadable(self, queue_name: str, raw: bytes) -> str | None:
        """The Redis id of a fetched payload the encoder cannot decode (during its fetch).

        The id is inside the payload, so it is found by comparing this process's ack set, where
        the fetch put it, with the stored payloads; this runs only for such payloads.
        """
        members = {_text(m) for m in self.client.smembers(self.ack_set_key(queue_name))}
        candidates = sorted(members - self._held[queue_name])
        if not candidates:
            return None
        stored = self.client.hmget(f"{self.namespace}:{queue_name}.msgs", candidates)
        return next((i for i, p in zip(candidates, stored, strict=True) if p == raw), None)

    def dead_letter_unreadable(self, queue_name: str, raw: bytes, exc: DecodeError) -> None:
        """Move a fetched payload the encoder cannot decode to the queue's dead letters, with
        why in the log (a consumer met it: without this it would crash on it)."""
        redis_id = self._unreadable.pop(raw, None) or self._find_unreadable(queue_name, raw)
        if redis_id is None:
            log.warning(
                f"A message on {queue_name} cannot be decoded ({exc.error or exc}) and is no "
                "longer in this worker's ack set; it will be met again",
                event_name="job.undecodable",
                queue=queue_name,
            )
            return
        self.do_nack(queue_name, redis_id)
        log.error(
            f"Message (Redis id {redis_id}) on {queue_name} cannot be decoded "
            f"({exc.error or exc}); it was moved to the dead letters",
            event_name="job.undecodable",
            queue=queue_name,
            redis_message_id=redis_id,
        )

    def do_ack(self, queue_name: str, redis_id: str) -> Any:
        if self._withholds(queue_name, redis_id, "acknowledged"):
            return None
        reply = self._dispatch_or_closed("do_ack", queue_name, redis_id)
        self._forget(queue_name, (redis_id,))
        return reply

    def do_nack(self, queue_name: str, redis_id: str) -> Any:
        if self._withholds(queue_name, redis_id, "dead-lettered"):
            return None
        reply = self._dispatch_or_closed("do_nack", queue_name, redis_id)
        self._forget(queue_name, (redis_id,))
        return reply

    def _dispatch_or_closed(self, command: str, queue_name: str, *args: Any) -> Any:
        """Run one of Dramatiq's dispatch commands; Redis away or refusing writes is reported
        as Dramatiq's ``ConnectionClosed``, which its consumer threads survive (they retry an
        acknowledgement, and restart after a failed fetch) instead of dying of it."""
        try:
            return super().__getattr__(command)(queue_name, *args)
        except redis.RedisError as exc:
            if redis_unavailable(exc):
                raise ConnectionClosed(exc) from None
            raise

    def _withholds(self, queue_name: str, redis_id: str, outcome: str) -> bool:
        """Whether the ack or nack of ``redis_id`` is withheld (see the module doc); if so, the
        message is a stray from now on. Raises ``ConnectionClosed`` while Redis is still away,
        so that Dramatiq retries at its own pace (no busy loop) until Redis is back."""
        if redis_id not in self._withheld:
            return False
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None
        self._withheld.discard(redis_id)
        log.warning(
            f"Message (Redis id {redis_id}) on {queue_name} not {outcome}: a message it sent "
            "could not be enqueued (Redis unavailable); it runs again once Redis is back",
            event_name="recovery.ack_withheld",
        )
        self._forget(queue_name, (redis_id,))
        self.strays_suspected.set()
        return True

    def do_requeue(self, queue_name: str, *redis_ids: str) -> Any:
        # on failure they are left in the ack set: strays, requeued later
        reply = self._dispatch_or_closed("do_requeue", queue_name, *redis_ids)
        self._forget(queue_name, redis_ids)
        return reply

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Any:
        """A consumer for ``queue_name`` (Dramatiq's own, fetching through a
        :class:`_ConsumerSide` of this broker); when it replaces one of the same thread, what
        the old one held only in its own memory is no longer held."""
        key = (threading.get_ident(), queue_name)
        previous = self._consumers.get(key)
        if previous is not None:
            self._back_off(key, queue_name)
        consumer = self.consumer_class(_ConsumerSide(self), queue_name, prefetch, timeout)
        self._consumers[key] = consumer
        if previous is not None:
            self._forget_what_was_lost(queue_name, previous)
        return consumer

    def forget_prefetched(self, consumers: Iterable[Any]) -> None:
        """The worker stopped: what its consumers had prefetched will never be processed."""
        for thread in consumers:
            consumer = getattr(thread, "consumer", None)
            if consumer is not None:
                self._forget(thread.queue_name, self._ids_of(consumer.message_cache))

    # -- strays ---------------------------------------------------------------------------

    def ack_set_key(self, queue_name: str, broker_id: str | None = None) -> str:
        """The Redis key of ``broker_id``'s (default: this process's) ack set of a queue."""
        return f"{self.namespace}:__acks__.{broker_id or self.broker_id}.{queue_name}"

    def all_queue_names(self) -> list[str]:
        """Every declared queue and its delay queue."""
        names = sorted(self.get_declared_queues())
        return [name for queue in names for name in (queue, dq_name(queue))]

    def held_count(self) -> int:
        return sum(len(ids) for ids in list(self._held.values()))

    def requeue_strays(self) -> int:
        """Requeue every message in this process's ack sets that it no longer holds.

        After the ack sets are read, the fetches begun by then are waited for (one round trip
        each): a message such a fetch put in an ack set is noted as held once it ends. A queue
        whose fetch does not end within :data:`FETCH_WAIT` is left for the next look. Returns how
        many messages went back to their queues.
        """
        self.strays_suspected.clear()
        queues = self.all_queue_names()
        pipe = self.client.pipeline(transaction=False)
        for queue_name in queues:
            pipe.smembers(self.ack_set_key(queue_name))
        members = pipe.execute()
        noted = self._fetches_noted
        with noted:
            begun = {q: self._fetches_begun[q] for q in queues}

            def settled() -> set[str]:
                return {q for q in queues if self._fetches_done[q] >= begun[q]}

            noted.wait_for(lambda: len(settled()) == len(queues), timeout=FETCH_WAIT)
            quiet = settled()
        strays = {
            queue_name: {_text(m) for m in found} - set(self._held[queue_name])
            for queue_name, found in zip(queues, members, strict=True)
        }
        requeued = 0
        for queue_name, redis_ids in strays.items():
            if redis_ids and queue_name in quiet:
                self.do_requeue(queue_name, *sorted(redis_ids))
                requeued += len(redis_ids)
        return requeued

    # -- internals ----------------------------------------------------------------------

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        if signal == "worker_shutdown":
            self._stopping.set()  # a consumer waiting to restart stops waiting
        super().emit_before(signal, *args, **kwargs)

    def _in_consumer_thread(self) -> bool:
        ident = threading.get_ident()
        return any(thread == ident for thread, _ in list(self._consumers))

    def _back_off(self, key: tuple[int, str], queue_name: str) -> None:
        """A consumer restarts (Dramatiq waits 3 s first): the second restart in a row without
        a fetch in between waits 1 s more, then 2, 4, ... up to :data:`RESTART_BACKOFF_MAX`,
        so a long Redis outage costs few restarts and few log lines; a fetch resets it."""
        restarts = self._restarts[key] = self._restarts.get(key, 0) + 1
        if restarts < 2:
            return
        delay = min(2.0 ** (restarts - 2), RESTART_BACKOFF_MAX)
        if restarts == 2 or delay < RESTART_BACKOFF_MAX or restarts % 10 == 0:
            log.warning(
                f"Consumer of {queue_name} restarted {restarts} times in a row (Redis "
                f"unavailable or refusing writes); the next restart waits {delay:g} s more",
                event_name="recovery.consumer_backoff",
                queue=queue_name,
                restarts=restarts,
            )
        self._stopping.wait(delay)

    def _ids_of(self, raw_messages: Iterable[bytes | None]) -> set[str]:
        """The Redis ids of fetched payloads, the undecodable ones included."""
        raws = [raw for raw in raw_messages if raw]
        unreadable = {self._unreadable.pop(raw) for raw in raws if raw in self._unreadable}
        return _redis_ids(raws) | unreadable

    def _forget(self, queue_name: str, redis_ids: Iterable[str]) -> None:
        self._held[queue_name].difference_update(redis_ids)

    def _forget_what_was_lost(self, queue_name: str, previous: Any) -> None:
        """A consumer restarted: its prefetched messages are gone from memory, and so is a
        delay queue's every delayed message unless its thread still has them queued."""
        lost = self._ids_of(getattr(previous, "message_cache", []))
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


class _ConsumerSide:
    """The broker as its consumers see it: the same dispatch commands, except that a fetch
    leaves out the payloads the encoder cannot decode, moved to the dead letters. Dramatiq's
    consumer would raise on such a payload, die and be restarted every second."""

    __slots__ = ("_broker",)

    def __init__(self, broker: RecoveringRedisBroker) -> None:
        self._broker = broker

    def do_fetch(self, queue_name: str, prefetch: int) -> list[bytes | None]:
        return self._broker.fetch_readable(queue_name, prefetch)

    def do_ack(self, queue_name: str, redis_id: str) -> Any:
        return self._broker.do_ack(queue_name, redis_id)

    def do_nack(self, queue_name: str, redis_id: str) -> Any:
        return self._broker.do_nack(queue_name, redis_id)

    def do_requeue(self, queue_name: str, *redis_ids: str) -> Any:
        return self._broker.do_requeue(queue_name, *redis_ids)


def _decode_error(raw: bytes) -> DecodeError:
    """Why ``raw`` cannot be decoded (the encoder's own error)."""
    try:
        Message.decode(raw)
    except DecodeError as exc:
        return exc
    return DecodeError("the payload decodes now", raw, None)  # pragma: no cover


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
