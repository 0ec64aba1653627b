"""Each process's local view of the breakers it uses, and the thread that keeps it fresh.

The view lets :class:`~.redis.RedisBackend` answer the healthy path (CLOSED, or OPEN with time
left) without a Redis round trip. It is kept fresh by pub/sub: every Lua script that changes what
a view shows publishes the new view on one channel. A periodic refresh reads every used breaker
again (catching anything pub/sub could not deliver) and flushes the counts of locally answered
calls. The view is trusted only while the subscription is live and the last refresh is recent;
otherwise every decision goes to Redis.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
import structlog

from soulspot_jobs.circuit_breaker.state import CircuitState

if TYPE_CHECKING:
    from soulspot_jobs.circuit_breaker.backends.redis import RedisBackend

log = structlog.get_logger("soulspot_jobs.circuit_breaker")

#: Longest pause, in seconds, between two attempts to re-subscribe after Redis failed.
MAX_RECONNECT_BACKOFF = 5.0
#: Longest the watcher blocks waiting for a message, in seconds: bounds how long stopping takes.
MAX_WAIT = 0.1
#: Refresh intervals to wait for a subscription's confirmation before reconnecting.
STALE_FACTOR = 3


class Tally:
    """A count that many threads add to without a lock, read by one reader at a time.

    ``itertools.count``'s ``__next__`` is one C call, atomic under the GIL, where ``n += 1``
    under a lock costs a lock round on every healthy call. A read calls it too, so it subtracts
    the reads made so far; the caller serialises reads (the backend's lock).
    """

    __slots__ = ("_count", "_reads", "_taken", "add_one")

    def __init__(self) -> None:
        self._count = itertools.count()
        self._reads = 0
        #: How much of the count was taken (flushed to Redis) so far.
        self._taken = 0
        #: Adds one (call it: ``tally.add_one()``); lock-free.
        self.add_one = self._count.__next__

    def _total(self) -> int:
        total = next(self._count) - self._reads
        self._reads += 1
        return total

    def pending(self) -> int:
        """What was added and not taken yet."""
        return self._total() - self._taken

    def take(self) -> int:
        """What was added and not taken yet, taken now."""
        total = self._total()
        amount, self._taken = total - self._taken, total
        return amount

    def give_back(self, amount: int) -> None:
        """Undo a :meth:`take` of ``amount`` (its flush failed)."""
        self._taken -= amount


@dataclass(slots=True)
class LocalView:
    """What this process knows of one breaker, and the counts it has not yet flushed."""

    state: CircuitState
    failure_count: int
    last_failure_at: float
    open_until: float
    version: int
    #: The operator's mode as stored: "" (normal), "disabled" or "metrics_only".
    mode: str = ""
    #: In HALF_OPEN with every slot taken: refuse locally until this backend-clock time.
    busy_until: float = 0.0
    requests: Tally = field(default_factory=Tally)
    successes: Tally = field(default_factory=Tally)
    rejections: Tally = field(default_factory=Tally)
    #: Successes counted here for a sliding window, flushed in batches through its script.
    window_successes: Tally = field(default_factory=Tally)
    #: The config of the breaker whose window successes are counted (what the flush needs).
    config: Any = None
    #: CLOSED and not disabled: an ordinary call may be admitted from this view (one test on
    #: the healthy path, kept with ``state`` and ``mode``).
    admits: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._judge()

    def _judge(self) -> None:
        self.admits = self.state is CircuitState.CLOSED and self.mode != "disabled"

    def update(
        self,
        state: CircuitState,
        failure_count: int,
        last_failure_at: float,
        open_until: float,
        version: int,
        mode: str = "",
    ) -> None:
        """Take a newer version of the shared state; older or equal versions are ignored."""
        if version <= self.version:
            return
        self.mode = mode
        self.state = state
        self._judge()
        self.failure_count = failure_count
        self.last_failure_at = last_failure_at
        self.open_until = open_until
        self.version = version
        self.busy_until = 0.0

    def take_counts(self) -> tuple[int, int, int]:
        """Take the unflushed (requests, successes, rejections)."""
        return (self.requests.take(), self.successes.take(), self.rejections.take())

    def pending_counts(self) -> tuple[int, int, int]:
        """The unflushed (requests, successes, rejections), left in place."""
        return (self.requests.pending(), self.successes.pending(), self.rejections.pending())

    def give_back(self, counts: tuple[int, int, int]) -> None:
        """Undo a :meth:`take_counts` whose flush failed."""
        tallies = (self.requests, self.successes, self.rejections)
        for tally, amount in zip(tallies, counts, strict=True):
            tally.give_back(amount)


class ViewWatcher(threading.Thread):
    """Daemon thread: subscribes to view changes and refreshes the views every ``interval``."""

    def __init__(self, backend: RedisBackend, interval: float) -> None:
        super().__init__(name="soulspot-breaker-view", daemon=True)
        self._backend_ref: Callable[[], RedisBackend | None] = weakref.ref(backend)
        self._interval = interval
        self._stopping = threading.Event()
        #: Set while subscribed and refreshed; cleared as soon as Redis fails.
        self.live = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self._not_live()

    def _not_live(self) -> None:
        self.live.clear()
        backend = self._backend_ref()
        if backend is not None:
            backend.distrust_views()

    def run(self) -> None:
        backoff = 0.05
        while not self._stopping.is_set():
            backend = self._backend_ref()
            if backend is None:
                return
            try:
                self._watch(backend)
                backoff = 0.05
            except redis.RedisError as exc:
                self._not_live()
                backend.note_watcher_error(exc)
            del backend
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, MAX_RECONNECT_BACKOFF)

    def _watch(self, backend: RedisBackend) -> None:
        pubsub = backend.client.pubsub()
        try:
            pubsub.subscribe(backend.channel)
            subscribed_by = time.monotonic() + self._interval * STALE_FACTOR
            while pubsub.get_message(timeout=MAX_WAIT) is None:
                if self._stopping.is_set():
                    return
                if time.monotonic() > subscribed_by:
                    raise redis.TimeoutError("no confirmation of the subscription")
            backend.refresh()
            backend.trust_views()
            self.live.set()
            next_refresh = time.monotonic() + self._interval
            next_flush = time.monotonic() + backend.outcome_flush_interval
            while not self._stopping.is_set():
                message = pubsub.get_message(
                    ignore_subscribe_messages=True,
                    timeout=min(max(next_refresh - time.monotonic(), 0.0), MAX_WAIT),
                )
                if message is not None and message["type"] == "message":
                    backend.apply_event(json.loads(message["data"]))
                if time.monotonic() >= next_flush:
                    backend.flush_outcomes()
                    next_flush = time.monotonic() + backend.outcome_flush_interval
                if time.monotonic() >= next_refresh:
                    backend.refresh()
                    backend.trust_views()
                    next_refresh = time.monotonic() + self._interval
        finally:
            self._not_live()
            pubsub.close()
