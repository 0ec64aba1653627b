"""Job records: what a user sees of a job's progress and outcome, keyed by the job id.

Every job (a track download, a playlist import, a metadata enrichment) has one Redis hash
(``Keys.job``); the ids of all jobs are in one sorted set (``Keys.job_index``) by creation time.
The actors write each step; the Retries middleware marks a job ``deferred`` (with the service
and until when) while a breaker holds it back. Each record keeps its own history (field ``history``:
every change of state, service or error, the last :data:`HISTORY_LIMIT` of them), so a job shows
how it got where it is, not only where it is.

Writers in several processes change one record at once (a step in one worker, the orphan check
or a deferral in another), so every change that depends on what the record holds (merging
details, counting an attempt, appending to the history, keeping a final state final) is read and
written by one Lua script (``lua/update_job.lua``, ``lua/reopen_job.lua``): no writer undoes
another's change.

A job an operator cancelled (``SoulspotJobs.cancel_job``) is ``cancelled``, a final state, and
its record is frozen: no later update writes to it, and the update says so
(:attr:`Update.CANCELLED`). That is how a job step sees, in the update it makes anyway as it
starts, that its job was cancelled (:func:`~soulspot_jobs.jobs.steps.job_step`).

Nothing grows forever: a record that reaches a final state expires ``ttl`` seconds later (Redis
EXPIRE), and the index is trimmed of ids whose record is gone, lazily (when a job finishes, at
most once per ``TRIM_INTERVAL`` per store, starting from the oldest ids; and when listing).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from importlib import resources
from typing import Any

import redis

from soulspot_jobs.keys import Keys

#: Entries a job's history keeps; older ones are dropped first.
HISTORY_LIMIT = 100
#: Oldest ids of the index one trim looks at per round (one ZRANGE, one pipeline of EXISTS,
#: one ZREM).
TRIM_BATCH = 500
#: Most rounds one trim makes; it stops early at a round that found no expired id.
TRIM_ROUNDS = 20
#: Seconds between two trims of the index by one store; a trim runs when a job finishes.
TRIM_INTERVAL = 60.0


class JobState(StrEnum):
    """Where a job is."""

    QUEUED = "queued"
    SEARCHING = "searching"
    DOWNLOADING = "downloading"
    ENRICHING = "enriching"
    DONE = "done"
    FAILED = "failed"
    DEFERRED = "deferred"
    #: Stopped by an operator (``soulspot-jobs jobs cancel``): its messages end without running.
    CANCELLED = "cancelled"


#: States a job never leaves (a requeued dead letter takes a failed job back to ``queued``).
FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
#: The note in a job's history when a dead letter of its steps was requeued.
REQUEUED_NOTE = "requeued from the dead-letter queue"


class Update(IntEnum):
    """What :meth:`JobStore.update` did; false only for :attr:`NO_RECORD`."""

    #: There is no such job: nothing was written.
    NO_RECORD = 0
    #: The record was updated.
    UPDATED = 1
    #: The record was updated into a final state: the job is finished.
    FINISHED = 2
    #: The job is cancelled: nothing was written (a cancelled record is frozen).
    CANCELLED = 3
    #: The job is in a final state and the caller asked to write only an unfinished one:
    #: nothing was written.
    FINAL = 4


@dataclass
class Job:
    """One job record. ``details`` holds each kind's own progress (search id, transfer, result)."""

    id: str
    kind: str
    state: JobState
    #: The service the job is waiting on or last talked to.
    service: str | None = None
    #: Times one of the job's steps ran.
    attempts: int = 0
    last_error: str | None = None
    #: Epoch milliseconds until which the job is deferred (state ``deferred``).
    deferred_until: int | None = None
    #: The id of the job's message waiting in the deferred index (state ``deferred``).
    deferred_message_id: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    #: Every change of state, service or error, oldest first (see :func:`history_entry`).
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "service": self.service,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "deferred_until": self.deferred_until,
            "deferred_message_id": self.deferred_message_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "details": self.details,
            "history": self.history,
        }


def history_entry(
    at: float, state: JobState | str, service: str | None, note: str | None
) -> dict[str, Any]:
    """One history entry: at ``at`` (epoch seconds) the job was in ``state`` on ``service``;
    ``note`` says why (the error, the deferral's reason) when there is something to say."""
    return {"at": at, "state": JobState(state).value, "service": service, "note": note}


class JobStore:
    """Job records in Redis; every write is one round trip: a pipeline, or a Lua script for a
    change that reads the record first (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys | None = None,
        *,
        ttl: float | None = None,
        trim_interval: float = TRIM_INTERVAL,
    ) -> None:
        self.client = client
        self.keys = keys or Keys()
        #: Seconds a finished job's record is kept; ``None`` keeps it forever.
        self.ttl = ttl
        self.trim_interval = trim_interval
        self._next_trim = 0.0
        prelude = _lua_source("_json")
        self._update_script = client.register_script(prelude + "\n" + _lua_source("update_job"))
        self._reopen_script = client.register_script(prelude + "\n" + _lua_source("reopen_job"))

    def key(self, job_id: str) -> str:
        return self.keys.job(job_id)

    @property
    def index_key(self) -> str:
        """The sorted set of every job id, scored by creation time (epoch seconds)."""
        return self.keys.job_index

    def create(self, kind: str, **details: Any) -> Job:
        """Record a new ``queued`` job of ``kind``."""
        now = time.time()
        job = Job(uuid.uuid4().hex, kind, JobState.QUEUED, created_at=now, updated_at=now)
        job.details = details
        job.history = [history_entry(now, JobState.QUEUED, None, "created")]
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key(job.id), mapping=_encode(job.as_dict()))
        pipe.zadd(self.index_key, {job.id: now})
        pipe.zadd(self.unfinished_key, {job.id: now})
        pipe.execute()
        return job

    def get(self, job_id: str) -> Job | None:
        raw = self.client.hgetall(self.key(job_id))
        if not raw:
            return None
        values = {_text(k): json.loads(v) for k, v in raw.items()}
        values["state"] = JobState(values["state"])
        values = {name: value for name, value in values.items() if name in _JOB_FIELDS}
        return Job(**values)

    def update(
        self,
        job_id: str,
        *,
        details: dict[str, Any] | None = None,
        count_attempt: bool = False,
        note: str | None = None,
        unless_final: bool = False,
        **fields: Any,
    ) -> Update:
        """Set ``fields`` (state, service, last_error, ...) and merge ``details`` into the job;
        returns what was done (:class:`Update`: false when there is no such job). One round
        trip: the record is read and written by one script (``lua/update_job.lua``), so
        concurrent updates from several processes each land whole.

        A job in a final state (done, failed) keeps its state, and its record expires ``ttl``
        seconds after its last write; with ``unless_final`` nothing is written to it
        (:attr:`Update.FINAL`). A cancelled job's record is never written
        (:attr:`Update.CANCELLED`). A change of state or service, a new ``last_error``, or a
        ``note`` is appended to the job's history (the note says why, unless a new
        ``last_error`` does).
        """
        now = time.time()
        if "state" in fields:
            fields["state"] = JobState(fields["state"]).value
        # A new state other than `deferred` ends a deferral, unless the caller says otherwise.
        clears_deferral = (
            fields.get("state", JobState.DEFERRED) != JobState.DEFERRED
            and "deferred_until" not in fields
        )
        resumes = (fields.get("deferred_until") or 0) / 1000
        ttl_ms = "" if self.ttl is None else str(max(1, round(self.ttl * 1000)))
        outcome = self._update_script(
            keys=[self.key(job_id), self.unfinished_key],
            args=[
                job_id,
                json.dumps(now),
                repr(max(now, resumes)),
                ttl_ms,
                "1" if count_attempt else "",
                HISTORY_LIMIT,
                _FINAL_STATES_JSON,
                "null" if clears_deferral else "",
                json.dumps(details) if details else "",
                _FROZEN_STATE_JSON,
                "1" if unless_final else "",
                json.dumps(note) if note is not None else "",
                *(part for item in _encode(fields).items() for part in item),
            ],
        )
        done = Update(int(outcome))
        if done is Update.FINISHED:
            self._trim_now_and_then()
        return done

    def state_of(self, job_id: str) -> JobState | None:
        """The job's state (one HGET), or None when there is no such job."""
        raw = self.client.hget(self.key(job_id), "state")
        return None if raw is None else JobState(json.loads(raw))

    def deferred_message_jobs(self) -> dict[str, str]:
        """The job of each message deferred now: ``deferred_message_id`` -> job id, for the
        unfinished jobs in state ``deferred`` (one pipeline per :data:`TRIM_BATCH` of them)."""
        found: dict[str, str] = {}
        job_ids = self.unfinished_ids()
        for start in range(0, len(job_ids), TRIM_BATCH):
            batch = job_ids[start : start + TRIM_BATCH]
            pipe = self.client.pipeline(transaction=False)
            for job_id in batch:
                pipe.hmget(self.key(job_id), "state", "deferred_message_id")
            for job_id, (state, message_id) in zip(batch, pipe.execute(), strict=True):
                if state is None or message_id is None:
                    continue
                if json.loads(state) == JobState.DEFERRED.value and json.loads(message_id):
                    found[json.loads(message_id)] = job_id
        return found

    @property
    def unfinished_key(self) -> str:
        """Sorted set of the jobs not yet in a final state, scored by their last sign of life
        (creation, last update, or the end of a deferral), epoch seconds; read by recovery."""
        return self.keys.unfinished_jobs

    def unfinished_ids(self, *, idle_since: float = float("inf")) -> list[str]:
        """Ids of the jobs not in a final state with no sign of life after ``idle_since``."""
        found = self.client.zrangebyscore(self.unfinished_key, "-inf", idle_since)
        return [_text(job_id) for job_id in found]

    def reopen(self, job_id: str, note: str) -> bool:
        """Take a job out of ``failed`` (or a stale state) back to ``queued``: its work was
        requeued and runs again. ``note`` says why, as ``last_error`` and in its history.
        False when there is no such job, or it is done (its work is complete) or cancelled (an
        operator stopped it: its requeued message ends without running). One round trip
        (``lua/reopen_job.lua``); a reopened record no longer expires."""
        reopened = self._reopen_script(
            keys=[self.key(job_id), self.unfinished_key],
            args=[
                job_id,
                json.dumps(time.time()),
                json.dumps(note),
                HISTORY_LIMIT,
                json.dumps(JobState.QUEUED.value),
                _KEPT_STATES_JSON,
            ],
        )
        return bool(reopened)

    def jobs(self, *, limit: int = 100) -> list[Job]:
        """The most recent jobs, newest first."""
        ids = [_text(job_id) for job_id in self.client.zrevrange(self.index_key, 0, limit - 1)]
        found = [self.get(job_id) for job_id in ids]
        gone = [job_id for job_id, job in zip(ids, found, strict=True) if job is None]
        if gone:
            self.client.zrem(self.index_key, *gone)
        return [job for job in found if job is not None]

    def find(self, *, state: JobState | None = None, limit: int = 100) -> list[Job]:
        """The most recent ``limit`` jobs in ``state`` (any state when None), newest first."""
        found: list[Job] = []
        start, page = 0, max(limit, 100)
        while len(found) < limit:
            ids = self.client.zrevrange(self.index_key, start, start + page - 1)
            if not ids:
                break
            for job_id in ids:
                job = self.get(_text(job_id))
                if job is not None and (state is None or job.state is state):
                    found.append(job)
            start += page
        return found[:limit]

    def count_by_state(self) -> dict[str, int]:
        """How many job records are in each state now (every state listed, zeros included)."""
        counts = {state.value: 0 for state in JobState}
        ids = self.client.zrange(self.index_key, 0, -1)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.key(_text(job_id)), "state")
        for raw in pipe.execute() if ids else []:
            if raw is not None:
                state = json.loads(raw)
                counts[state] = counts.get(state, 0) + 1
        return counts

    def trim_index(self, batch: int = TRIM_BATCH, rounds: int = TRIM_ROUNDS) -> int:
        """Remove from the index the ids among its oldest whose record has expired.

        Each round looks at the ``batch`` oldest ids and removes those without a record; rounds
        go on while they find some, up to ``rounds``. Returns how many ids were removed. An id
        enters the index only after its record was written, so an id without a record is one
        whose record expired (or was deleted).
        """
        removed = 0
        for _ in range(rounds):
            ids = self.client.zrange(self.index_key, 0, batch - 1)
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.exists(self.key(_text(job_id)))
            gone = [job_id for job_id, found in zip(ids, pipe.execute(), strict=True) if not found]
            if not gone:
                break
            self.client.zrem(self.index_key, *gone)
            removed += len(gone)
        return removed

    def _trim_now_and_then(self) -> None:
        """Trim the index if this store has not done so for ``trim_interval`` seconds."""
        now = time.monotonic()
        if now < self._next_trim:
            return
        self._next_trim = now + self.trim_interval
        self.trim_index()


#: Field names of :class:`Job`; other fields of a record's hash are not the job's.
_JOB_FIELDS = frozenset(Job.__dataclass_fields__)
#: The final states as ``update_job.lua`` compares them: a JSON array of the stored values.
_FINAL_STATES_JSON = json.dumps(sorted(state.value for state in FINAL_STATES))
#: The states ``reopen_job.lua`` never takes a job out of: its work is complete, or an operator
#: stopped it.
_KEPT_STATES_JSON = json.dumps([JobState.DONE.value, JobState.CANCELLED.value])
#: The state whose records ``update_job.lua`` never writes, as stored.
_FROZEN_STATE_JSON = json.dumps(JobState.CANCELLED.value)


def _lua_source(name: str) -> str:
    """The text of ``lua/<name>.lua`` beside this module."""
    return resources.files("soulspot_jobs.jobs").joinpath("lua", f"{name}.lua").read_text()


def _encode(values: dict[str, Any]) -> dict[str, str]:
    return {name: json.dumps(value) for name, value in values.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
