"""What the operators' page shows, read from Redis in one go: breakers, deferred jobs, dead
letters, jobs and the workers alive.

A :class:`Snapshot` is plain data; the templates render it and nothing in them reads Redis. Each
part is read on its own, so a part that cannot be read (the dead letters under a RabbitMQ broker,
say) is reported in ``problems`` while the others still show.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.deferral.dead_letters import DeadLetter
from soulspot_jobs.deferral.index import DeferredJob
from soulspot_jobs.jobs.app import job_id_of
from soulspot_jobs.jobs.records import Job, JobState
from soulspot_jobs.middleware.presence import WorkerInfo, live_workers
from soulspot_jobs.operate.health import SERVICES

if TYPE_CHECKING:
    from soulspot_jobs.jobs.app import SoulspotJobs

#: Most jobs listed (the newest first); the counts by state cover every job.
JOBS_SHOWN = 50
#: Most dead letters and deferred jobs per service listed.
ENTRIES_SHOWN = 200

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BreakerView:
    """One service's breaker as the page shows it."""

    key: str
    name: str
    state: str
    #: Epoch milliseconds at which an OPEN breaker admits a trial (the page counts down to it).
    retry_at: int | None
    failures: int
    reason: str | None
    forced: bool
    requests: int
    rejections: int
    deferred: int
    #: The operator's mode: normal, disabled, metrics_only or forced_open.
    mode: str = "normal"
    #: Openings metrics_only mode counted instead of making.
    would_opens: int = 0


@dataclass(slots=True)
class Snapshot:
    """Everything on the page, as read at ``taken_at`` (epoch milliseconds)."""

    taken_at: int
    breakers: list[BreakerView] = field(default_factory=list)
    #: Deferred messages by breaker name, soonest first.
    deferred: dict[str, list[DeferredJob]] = field(default_factory=dict)
    #: Message id -> the job it belongs to, for the deferred and dead-lettered messages.
    job_of: dict[str, str] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    job_counts: dict[str, int] = field(default_factory=dict)
    jobs: list[Job] = field(default_factory=list)
    workers: list[WorkerInfo] = field(default_factory=list)
    #: Part -> why it could not be read.
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def overall(self) -> str:
        if "breakers" in self.problems:
            return "unavailable"
        healthy = all(view.state == CircuitState.CLOSED.value for view in self.breakers)
        return "healthy" if healthy else "degraded"


def take_snapshot(app: SoulspotJobs, state: JobState | None = None) -> Snapshot:
    """Read everything the page shows from ``app``'s Redis (blocking: a few round trips); the
    jobs listed are the newest, or the newest in ``state``."""
    now = time.time()
    snapshot = Snapshot(taken_at=int(now * 1000))
    counts = _part(snapshot, "deferred", app.deferred.counts) or {}
    snapshot.breakers = _part(snapshot, "breakers", lambda: _breakers(app, now, counts)) or []
    for name in SERVICES.values():
        jobs = _part(snapshot, "deferred", lambda name=name: app.deferred.jobs(name)) or []
        snapshot.deferred[name] = sorted(jobs, key=lambda job: job.eta)[:ENTRIES_SHOWN]
    letters = _part(snapshot, "dead_letters", lambda: app.dead_letters().list()) or []
    snapshot.dead_letters = letters[:ENTRIES_SHOWN]
    snapshot.job_counts = _part(snapshot, "jobs", app.store.count_by_state) or {}
    snapshot.jobs = (
        _part(snapshot, "jobs", lambda: app.store.find(state=state, limit=JOBS_SHOWN)) or []
    )
    snapshot.workers = (
        _part(snapshot, "workers", lambda: live_workers(app.broker.redis, app.keys.workers)) or []
    )
    if any(snapshot.deferred.values()):
        snapshot.job_of = _part(snapshot, "jobs", app.store.deferred_message_jobs) or {}
    snapshot.job_of.update(_dead_letter_jobs(snapshot.dead_letters))
    return snapshot


def _breakers(app: SoulspotJobs, now: float, deferred: dict[str, int]) -> list[BreakerView]:
    views = []
    for key, name in SERVICES.items():
        stats = app.breakers[name].stats
        retry_at = None
        if stats.state is CircuitState.OPEN and stats.retry_after is not None:
            # whole seconds, so that the section's HTML stays the same from one look to the next
            retry_at = _epoch_ms(round(now + stats.retry_after))
        views.append(
            BreakerView(
                key=key,
                name=name,
                state=stats.state.value,
                retry_at=retry_at,
                failures=stats.failure_count,
                reason=stats.reason,
                forced=stats.forced_until is not None,
                requests=stats.total_requests,
                rejections=stats.total_rejections,
                deferred=deferred.get(name, 0),
                mode=stats.mode,
                would_opens=stats.would_opens,
            )
        )
    return views


def _dead_letter_jobs(letters: list[DeadLetter]) -> dict[str, str]:
    """The job each dead letter is a step of, from the message's own arguments."""
    found = {}
    for letter in letters:
        job_id = None if letter.message is None else job_id_of(letter.message)
        if job_id is not None:
            found[letter.message_id] = job_id
    return found


def _epoch_ms(seconds: float) -> int | None:
    """Epoch milliseconds, or ``None`` for a time no clock can show (a stored ``inf``)."""
    return int(seconds * 1000) if math.isfinite(seconds) and seconds < 1e11 else None


def _part(snapshot: Snapshot, part: str, read: Callable[[], T]) -> T | None:
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - one part failing must not blank the page
        snapshot.problems.setdefault(part, str(exc) or type(exc).__name__)
        return None
