"""``Recovery``: the middleware that brings back the messages of dead worker processes and the
messages a live one lost, within seconds instead of Dramatiq's minutes.

Every worker process runs one thread that, every ``RECOVERY_INTERVAL`` (1 s):

1. heartbeats, requeues the unacknowledged messages of every process silent for
   ``RECOVERY_HEARTBEAT_TIMEOUT`` (15 s; a ``kill -9``, a lost host), and notices when Redis
   lost its data (``lua/heartbeat.lua``: one EVALSHA);
2. after a consumer restart, a failed look (Redis was away) and every ``STRAY_CHECK_EVERY``
   seconds anyway, requeues the messages its own ack sets hold that it no longer holds
   (:meth:`RecoveringRedisBroker.requeue_strays`).

Dramatiq's own maintenance does step 1 only by chance (1 command in 1000) and only after 60 s;
it never does step 2.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import Middleware

from soulspot_jobs.broker.redis import RecoveringRedisBroker
from soulspot_jobs.middleware.periodic import Periodic
from soulspot_jobs.settings import RecoverySettings

log = structlog.get_logger("soulspot_jobs.recovery")

#: Seconds between two checks of this process's own ack sets when nothing suggests strays.
STRAY_CHECK_EVERY = 30.0
#: Milliseconds the "Redis has been looked at" marker outlives the last look.
MARKER_TTL = 24 * 60 * 60 * 1000
#: Seconds ``after_worker_shutdown`` waits for the thread to finish its current step.
STOP_TIMEOUT = 5.0


def _heartbeat_source() -> str:
    return resources.files("soulspot_jobs.middleware").joinpath("lua", "heartbeat.lua").read_text()


class Recovery(Middleware):
    """Requeues dead processes' messages and this process's strays; see the module docstring.

    Runs only in processes that run a :class:`dramatiq.Worker` (started on worker boot,
    stopped on worker shutdown); producers need none of it. It goes first among the middleware,
    so that it notes each message before any other middleware may enqueue on its behalf, and
    forgets it after the last one did (see :meth:`RecoveringRedisBroker.processing`).
    """

    def __init__(self, settings: RecoverySettings, *, marker_key: str) -> None:
        self.settings = settings
        self.marker_key = marker_key
        self._thread: Periodic | None = None
        self._broker: RecoveringRedisBroker | None = None
        self._script: Any = None
        self._seen_marker = False
        self._next_stray_check = 0.0

    @property
    def has_looked(self) -> bool:
        """Whether this process has looked at Redis once (and so knows its marker)."""
        return self._seen_marker

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if not isinstance(broker, RecoveringRedisBroker) or self._thread is not None:
            return
        self._broker = broker
        self._script = broker.client.register_script(_heartbeat_source())
        self._next_stray_check = time.monotonic() + STRAY_CHECK_EVERY
        self._thread = Periodic("soulspot-recovery", self.settings.interval, self.step)
        self._thread.start()

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if isinstance(broker, RecoveringRedisBroker):
            broker.processing(message)

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        if isinstance(broker, RecoveringRedisBroker):
            broker.processing(None)

    after_skip_message = after_process_message

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        """Stop the thread, then give back at once what the stopped consumers held only in
        memory (their prefetched messages), instead of leaving it to the other processes."""
        if self._thread is None or self._broker is None:
            return
        self._thread.stop(STOP_TIMEOUT)
        self._thread = None
        self._broker.forget_prefetched(getattr(worker, "consumers", {}).values())
        try:
            self._requeue_strays("on shutdown")
        except Exception as exc:  # the other processes will requeue them after the timeout
            log.warning(
                f"Could not requeue this worker's unprocessed messages on shutdown: {exc}",
                event_name="recovery.shutdown_requeue_failed",
            )

    def step(self, previous_failed: bool) -> None:
        """One look: heartbeat, dead processes, lost data, and strays when suspected."""
        broker = self._broker
        assert broker is not None and self._script is not None
        had_marker, requeued, dead = self._script(
            keys=[broker.namespace, self.marker_key],
            args=[
                broker.broker_id,
                int(time.time() * 1000),
                int(self.settings.heartbeat_timeout * 1000),
                MARKER_TTL,
                *broker.all_queue_names(),
            ],
        )
        if requeued:
            log.warning(
                f"Requeued {requeued} messages of {dead} worker process(es) silent for "
                f"{self.settings.heartbeat_timeout} s",
                event_name="recovery.dead_workers",
                requeued=requeued,
                workers=dead,
            )
        if self._seen_marker and not had_marker:
            log.error(
                "Redis lost its data (restarted without persistence?): queued messages, job "
                f"records and breaker state are gone; {broker.held_count()} messages held by "
                "this worker will be dead-lettered as they arrive. Run Redis with appendonly yes.",
                event_name="recovery.redis_data_lost",
            )
        self._seen_marker = True
        now = time.monotonic()
        if previous_failed or broker.strays_suspected.is_set() or now >= self._next_stray_check:
            self._next_stray_check = now + STRAY_CHECK_EVERY
            self._requeue_strays("after a reconnect" if previous_failed else "periodic check")

    def _requeue_strays(self, why: str) -> None:
        assert self._broker is not None
        requeued = self._broker.requeue_strays()
        if requeued:
            log.warning(
                f"Requeued {requeued} messages this worker had fetched but no longer held ({why})",
                event_name="recovery.strays",
                requeued=requeued,
            )
