"""``OrphanCheck``: jobs whose messages vanished are requeued (then failed), never left hanging.

A job in a non-final state always has a message somewhere while it is alive: in a queue, a
delay queue, a worker's ack set (the ``.msgs`` hashes hold all three) or the dead letters. When
Redis lost data (restarted without persistence, or a crash took the last second of an
append-only file) or a message was dropped some other way (a producer died between writing the
record and sending its message), the record is all that is left.

One worker process at a time (a lease in Redis) looks every ``RECOVERY_ORPHAN_CHECK_INTERVAL``
for such jobs: not in a final state (done, failed, cancelled), no sign of life for
``RECOVERY_ORPHAN_AFTER`` (last update, or the end of a deferral) and no message anywhere, on
two looks in a row with no update in between (a message moving between hashes during one scan
cannot make a job look orphaned). The unfinished jobs are a sorted set scored by their last sign
of life, so a look reads only the idle ones; the message hashes are scanned only when some job
is idle, and at most a tenth of the time (a long backlog makes queued jobs look idle). Each
orphan is requeued at its current step, logged at ERROR (``job.orphaned``); after
``RECOVERY_ORPHAN_REQUEUES`` requeues it is marked ``failed`` with the reason instead.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from importlib import resources
from typing import Any

import dramatiq
import structlog
from dramatiq.errors import DecodeError
from dramatiq.middleware import Middleware

from soulspot_jobs.broker.redis import RecoveringRedisBroker
from soulspot_jobs.jobs.records import FINAL_STATES, Job, JobState, JobStore
from soulspot_jobs.middleware.periodic import Periodic
from soulspot_jobs.settings import RecoverySettings

log = structlog.get_logger("soulspot_jobs.recovery")

#: Job records read per pipeline.
BATCH = 500
#: The lease on the check lasts this many check intervals (a dead holder is replaced after it).
LEASE_INTERVALS = 3
#: After a look that scanned the message hashes, wait this many times its duration.
SCAN_BACKOFF = 10


def next_step(job: Job) -> str:
    """The actor that continues ``job`` from where its record says it is."""
    if job.kind == "playlist":
        return "import_playlist"
    if job.kind == "enrichment" or job.state is JobState.ENRICHING:
        return "enrich_metadata"
    if job.details.get("transfer_id"):
        return "poll_download"
    return "search_track"


class OrphanCheck(Middleware):
    """Finds unfinished jobs with no message anywhere and requeues or fails them."""

    def __init__(
        self,
        settings: RecoverySettings,
        store: JobStore,
        *,
        job_actors: Iterable[str],
        lease_key: str,
    ) -> None:
        self.settings = settings
        self.store = store
        self.job_actors = frozenset(job_actors)
        self.lease_key = lease_key
        self._token = uuid.uuid4().hex
        self._broker: RecoveringRedisBroker | None = None
        self._lead: Any = None
        self._thread: Periodic | None = None
        #: Jobs that looked orphaned on the previous look, with their ``updated_at`` then.
        self._suspects: dict[str, float] = {}
        #: ``time.monotonic()`` before which no look starts (see ``SCAN_BACKOFF``).
        self._next_scan = 0.0

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if not isinstance(broker, RecoveringRedisBroker) or self._thread is not None:
            return
        self._broker = broker
        source = resources.files("soulspot_jobs.middleware").joinpath("lua", "lead.lua")
        self._lead = broker.client.register_script(source.read_text())
        interval = self.settings.orphan_check_interval
        self._thread = Periodic("soulspot-orphan-check", interval, self.step)
        self._thread.start()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._thread is not None:
            self._thread.stop(self.settings.orphan_check_interval)
            self._thread = None

    def step(self, previous_failed: bool = False) -> list[str]:
        """One look; returns the ids of the jobs requeued or failed."""
        assert self._broker is not None and self._lead is not None
        lease_ms = int(self.settings.orphan_check_interval * LEASE_INTERVALS * 1000)
        if not self._lead(keys=[self.lease_key], args=[self._token, lease_ms]):
            self._suspects = {}
            return []
        now = time.monotonic()
        if now < self._next_scan:
            return []
        suspects = self._inactive_jobs(time.time())
        if suspects:
            for job_id in self._jobs_with_messages(set(suspects)):
                del suspects[job_id]
            # Jobs waiting behind a long backlog look idle too; keep the scans of the message
            # hashes to about a tenth of this thread's time however big the backlog grows.
            self._next_scan = now + SCAN_BACKOFF * (time.monotonic() - now)
        confirmed = [job for job, seen in suspects.items() if self._suspects.get(job) == seen]
        self._suspects = suspects
        return [job_id for job_id in confirmed if self._recover(job_id)]

    # -- looking ----------------------------------------------------------------------------

    def _inactive_jobs(self, now: float) -> dict[str, float]:
        """Unfinished jobs with no activity for ``orphan_after``: id -> ``updated_at``."""
        client, found, gone = self.store.client, {}, []
        job_ids = self.store.unfinished_ids(idle_since=now - self.settings.orphan_after)
        for start in range(0, len(job_ids), BATCH):
            batch = job_ids[start : start + BATCH]
            pipe = client.pipeline(transaction=False)
            for job_id in batch:
                pipe.hmget(self.store.key(job_id), "state", "updated_at", "deferred_until")
            for job_id, (state, updated_at, deferred_until) in zip(
                batch, pipe.execute(), strict=True
            ):
                if state is None or json.loads(state) in FINAL_STATES:
                    gone.append(job_id)
                    continue
                updated = float(json.loads(updated_at or "0"))
                resumes = (json.loads(deferred_until or "null") or 0) / 1000
                if now - max(updated, resumes) > self.settings.orphan_after:
                    found[job_id] = updated
        if gone:
            client.zrem(self.store.unfinished_key, *gone)
        return found

    def _jobs_with_messages(self, wanted: set[str]) -> set[str]:
        """Which of ``wanted`` have a message in a queue, delay queue, ack set or dead letters."""
        broker = self._broker
        assert broker is not None
        hashes = [f"{broker.namespace}:{name}.msgs" for name in broker.all_queue_names()]
        hashes += [f"{broker.namespace}:{q}.XQ.msgs" for q in sorted(broker.get_declared_queues())]
        present = set()
        for key in hashes:
            for _, raw in broker.client.hscan_iter(key, count=1000):
                job_id = self._job_id(raw)
                if job_id in wanted:
                    present.add(job_id)
        return present

    def _job_id(self, raw: bytes) -> str | None:
        """The job a stored message is a step of, read with Dramatiq's encoder (any encoder)."""
        try:
            message = dramatiq.Message.decode(raw)
        except DecodeError:
            return None
        args = message.args
        if message.actor_name in self.job_actors and args and isinstance(args[0], str):
            return args[0]
        return None

    # -- acting -----------------------------------------------------------------------------

    def _recover(self, job_id: str) -> bool:
        assert self._broker is not None
        job = self.store.get(job_id)
        if job is None or job.state in FINAL_STATES:
            return False
        requeues = int(job.details.get("orphan_requeues", 0))
        idle = time.time() - job.updated_at
        reason = (
            f"its messages vanished: none in any queue, delay queue or dead letters for "
            f"{idle:.0f} s (Redis lost data, or a worker dropped them while Redis was away)"
        )
        fields = {"job_id": job_id, "state": job.state.value, "requeues": requeues}
        if requeues < self.settings.orphan_requeues:
            step = next_step(job)
            self.store.update(job_id, details={"orphan_requeues": requeues + 1}, last_error=reason)
            self._broker.get_actor(step).send(job_id)
            log.error(
                f"Job {job_id} requeued at {step}: {reason}",
                event_name="job.orphaned",
                action="requeued",
                step=step,
                **fields,
            )
        else:
            self.store.update(job_id, state=JobState.FAILED, last_error=reason)
            log.error(
                f"Job {job_id} failed: {reason}; requeued {requeues} times already",
                event_name="job.orphaned",
                action="failed",
                **fields,
            )
        return True
