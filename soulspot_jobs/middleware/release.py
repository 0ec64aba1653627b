"""``DeferredRelease``: a service's deferred messages run the moment its breaker closes.

A deferred message waits in the memory of a worker process until its eta
(:mod:`soulspot_jobs.deferral.delay_queues`). When a breaker closes -- a HALF_OPEN trial
succeeded, an operator reset it, in any process sharing the Redis -- every worker process
releases the messages of that service it holds: the first runs at once, each next one
``stagger`` ms later, so that a backlog does not reach the service all together (the breaker's
trial cap and the MusicBrainz rate limiter apply as ever when each runs). None runs later than
it would have. Should the breaker open again meanwhile, those not yet moved wait for their own
etas again. Only a message that waits for its service to be back is released, never one held
back by back-pressure or a plain retry (option ``RELEASE_FROM``, :mod:`soulspot_jobs.deferral.
options`).

How a worker learns of a closing: the breakers' Redis backend publishes every change of a
breaker on one channel. One thread per worker process subscribes to it and keeps the last state
seen of each breaker (:class:`~soulspot_jobs.deferral.closings.Closings`); on each subscription
it also reads every breaker's state once, so that a closing missed while Redis was away still
releases. The thread starts when the process first holds a message waiting for its service
(``before_delay_message``): a process that never defers one costs the breakers' Redis nothing.
The consumer threads of the delay queues are recorded as they boot
(``after_consumer_thread_boot``). A message deferred just before a closing may reach the
process's memory only after it (the delay queue's consumer fetches at most every
``worker_timeout``): it is released as it arrives.

Latency: Dramatiq's consumers poll an idle queue with a backoff of up to the worker's
``worker_timeout`` (1000 ms by default), first the delay queue's consumer (which moves a due
message to its queue), then the queue's (which fetches it): up to two of those after the eta.
So the release thread moves each released message to its queue itself, at its new eta, and this
middleware lowers ``worker_timeout`` to at most :data:`MAX_WORKER_TIMEOUT` on worker boot,
bounding the queue consumer's wait: a released message starts within about half a second of
the closing, and every deferred or retried message within that of its eta. (Released messages
that reach their queue while its consumer sleeps are fetched together on its next look: at most
about ``worker_timeout / stagger``, 10, at once per process, then one per ``stagger``.)

Without a Redis backend (the in-memory one of single-process tests) there is no channel: this
middleware does nothing, and deferred messages run at their etas.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.common import current_millis, dq_name
from dramatiq.middleware import Middleware

from soulspot_jobs.circuit_breaker import Breakers
from soulspot_jobs.deferral import delay_queues
from soulspot_jobs.deferral.closings import CLOSED, Closings, parse_change
from soulspot_jobs.deferral.options import DEFERRED_BY, RELEASE_FROM

__all__ = ["DeferredRelease"]

log = structlog.get_logger("soulspot_jobs.middleware")

#: Milliseconds between two released messages of one worker process.
DEFAULT_STAGGER = 50
#: The longest ``worker_timeout`` (milliseconds) a worker on this stack keeps: an idle queue's
#: consumer looks at it at least this often, so a released message waits at most this long.
MAX_WORKER_TIMEOUT = 500
#: Longest the release thread blocks waiting for a published change, in seconds: bounds how long
#: stopping takes.
MAX_WAIT = 0.1
#: Seconds to wait for the confirmation of a subscription before subscribing again.
SUBSCRIBE_TIMEOUT = 5.0
#: Shortest and longest pause, in seconds, before subscribing again after a failure.
MIN_RECONNECT_BACKOFF = 0.05
MAX_RECONNECT_BACKOFF = 5.0
#: Seconds worker shutdown waits for the release thread to stop.
STOP_TIMEOUT = 2.0


class DeferredRelease(Middleware):
    """Releases a service's deferred messages once its breaker closes; see the module doc.

    Parameters:
      breakers: the deployment's breakers; their backend's ``channel`` and ``client`` carry the
        published changes (a backend without them, the in-memory one, turns this off).
      stagger: milliseconds between two released messages of this process.
      max_worker_timeout: the longest ``worker_timeout`` a worker keeps (milliseconds).
    """

    def __init__(
        self,
        *,
        breakers: Breakers,
        stagger: int = DEFAULT_STAGGER,
        max_worker_timeout: int = MAX_WORKER_TIMEOUT,
    ) -> None:
        self.breakers = breakers
        backend = breakers.backend
        #: Where the breakers publish their changes; ``None``: nothing to release on.
        self.channel: str | None = getattr(backend, "channel", None)
        self.client: redis.Redis | None = getattr(backend, "client", None)
        self.stagger = stagger
        self.max_worker_timeout = max_worker_timeout
        self._consumers: set[Any] = set()
        self._lock = threading.Lock()
        self._thread: _ReleaseThread | None = None
        #: Between worker boot and shutdown (and only with a channel to follow).
        self._worker_running = False

    @property
    def enabled(self) -> bool:
        return self.channel is not None and self.client is not None

    def consumers(self) -> list[Any]:
        """The consumer threads of this process's delay queues."""
        with self._lock:
            return list(self._consumers)

    # -- hooks ------------------------------------------------------------------------------

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Bound the worker's polling interval (see the module doc), before its threads start
        (its consumers fetch from the moment they do)."""
        if self.enabled and worker.worker_timeout > self.max_worker_timeout:
            worker.worker_timeout = self.max_worker_timeout
        self._worker_running = self.enabled

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Stop releasing before the consumers give their delayed messages back to the broker
        (with their own etas)."""
        with self._lock:
            self._worker_running = False
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()
            thread.join(STOP_TIMEOUT)

    def after_consumer_thread_boot(self, broker: dramatiq.Broker, thread: Any) -> None:
        if thread.queue_name == dq_name(thread.queue_name):
            with self._lock:
                self._consumers.add(thread)

    def before_consumer_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        with self._lock:
            self._consumers.discard(thread)

    def before_delay_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """A delayed message reaches this process's memory (a delay queue's consumer fetched
        it): one deferred before its breaker closed is released too (see :meth:`_ReleaseThread.
        arrived`)."""
        options = message.options
        service, release_from = options.get(DEFERRED_BY), options.get(RELEASE_FROM)
        if service is None or release_from is None or not self._worker_running:
            return
        thread = self._thread
        if thread is None:
            with self._lock:
                if self._thread is None and self._worker_running:
                    self._thread = _ReleaseThread(self)
                    self._thread.start()
                thread = self._thread
        if thread is not None:
            thread.arrived(service, release_from)


class _ReleaseThread(threading.Thread):
    """Daemon thread: follows the breakers' changes and moves released messages on time."""

    def __init__(self, middleware: DeferredRelease) -> None:
        super().__init__(name="soulspot-deferred-release", daemon=True)
        self.middleware = middleware
        self._stopping = threading.Event()
        self._closings = Closings()
        #: Released messages not yet moved: ``(new eta, seq, service, consumer thread)``.
        self._due: list[tuple[int, int, str, Any]] = []
        self._seq = itertools.count()
        #: Service -> epoch ms at which this thread saw its breaker close, while it stays CLOSED.
        self._closed_at: dict[str, int] = {}
        #: Services with a message that arrived after their breaker closed (see ``arrived``).
        self._arrivals: set[str] = set()
        self._arrivals_lock = threading.Lock()
        #: Set from a failure until the next subscription; the pause before subscribing again.
        self._failing = False
        self._backoff = MIN_RECONNECT_BACKOFF

    def stop(self) -> None:
        self._stopping.set()

    def arrived(self, service: str, release_from: int) -> None:
        """A message of ``service`` deferred at ``release_from`` reaches a delay queue of this
        process (from a consumer thread). The delay queue's consumer fetches at most every
        ``worker_timeout``, so a message deferred just before its breaker closed may arrive
        after the release; if it was deferred before the closing (clocks of two hosts compared:
        a skew costs at most one deferral more), it is released at the thread's next look,
        by when the consumer has put it in its queue."""
        closed_at = self._closed_at.get(service)
        if closed_at is not None and release_from < closed_at:
            with self._arrivals_lock:
                self._arrivals.add(service)

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._watch()
                return
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any failure
                if not self._failing:
                    log.warning(
                        f"Deferred messages are not released early while the breakers' changes "
                        f"cannot be followed ({type(exc).__name__}: {exc}); they run at their "
                        "own eta meanwhile.",
                        event_name="job.release_failed",
                        error=str(exc),
                    )
                self._failing = True
            self._stopping.wait(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_RECONNECT_BACKOFF)

    # -- following the changes ----------------------------------------------------------------

    def _watch(self) -> None:
        """Subscribe, read every breaker's state once, then follow the changes until stopped."""
        middleware = self.middleware
        assert middleware.client is not None and middleware.channel is not None
        pubsub = middleware.client.pubsub()
        try:
            pubsub.subscribe(middleware.channel)
            deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
            while pubsub.get_message(timeout=MAX_WAIT) is None:
                if self._stopping.is_set():
                    return
                if time.monotonic() > deadline:
                    raise redis.TimeoutError("no confirmation of the subscription")
            self._look_at_breakers()
            self._failing, self._backoff = False, MIN_RECONNECT_BACKOFF
            while not self._stopping.is_set():
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=self._wait())
                if message is not None and message.get("type") == "message":
                    change = parse_change(message["data"])
                    if change is not None:
                        self._changed(change.name, change.state)
                self._release_arrivals()
                self._move_due()
        finally:
            pubsub.close()

    def _look_at_breakers(self) -> None:
        """Take every breaker's shared state as a change (a closing missed while away)."""
        breakers = self.middleware.breakers
        for name in breakers.names():
            stats = breakers[name].stats
            if not stats.local:  # this process's own stand-in says nothing of the others
                self._changed(name, stats.state.value)

    def _changed(self, name: str, state: str) -> None:
        if self._closings.seen(name, state):
            self._closed_at[name] = current_millis()
            self._release(name)
        elif state != CLOSED:
            self._closed_at.pop(name, None)
            self._hold_again(name)

    def _release_arrivals(self) -> None:
        with self._arrivals_lock:
            services, self._arrivals = self._arrivals, set()
        for service in services:
            if service in self._closed_at:
                self._release(service)

    # -- releasing ------------------------------------------------------------------------------

    def _release(self, service: str) -> None:
        released = delay_queues.release(
            self.middleware.consumers(),
            service,
            now=current_millis(),
            stagger=self.middleware.stagger,
        )
        if not released:
            return
        for at, thread in released:
            heapq.heappush(self._due, (at, next(self._seq), service, thread))
        log.info(
            f"Released {len(released)} deferred messages of {service}: its circuit breaker closed.",
            event_name="job.released",
            circuit_breaker=service,
            state=CLOSED,
            service=service,
            released=len(released),
        )
        self._move_due()

    def _hold_again(self, service: str) -> None:
        """The breaker opened again: what was released and not yet moved waits for its eta."""
        if not any(entry[2] == service for entry in self._due):
            return
        self._due = [entry for entry in self._due if entry[2] != service]
        heapq.heapify(self._due)
        held = delay_queues.hold_again(self.middleware.consumers(), service)
        log.info(
            f"{held} released messages of {service} wait for their own eta again: its circuit "
            "breaker is no longer CLOSED.",
            event_name="job.release_cancelled",
            circuit_breaker=service,
            service=service,
            held=held,
        )

    def _move_due(self) -> None:
        """Move the released messages whose new eta has come to their queues."""
        now = current_millis()
        threads: list[Any] = []
        while self._due and self._due[0][0] <= now:
            thread = heapq.heappop(self._due)[3]
            if thread not in threads:
                threads.append(thread)
        for thread in threads:
            if getattr(thread, "consumer", None) is None or not thread.running:
                continue
            try:
                delay_queues.move_due(thread)
            except Exception as exc:  # noqa: BLE001 - the delay queue's consumer moves it instead
                log.warning(
                    f"A released message could not be moved from {thread.queue_name} "
                    f"({type(exc).__name__}: {exc}); its consumer will move it.",
                    event_name="job.release_failed",
                    error=str(exc),
                )

    def _wait(self) -> float:
        """Seconds to wait for a change: until the next released message is due, at most
        :data:`MAX_WAIT`."""
        if not self._due:
            return MAX_WAIT
        return min(MAX_WAIT, max(0.0, (self._due[0][0] - current_millis()) / 1000))
