"""``SoulspotJobs``: the broker, its middleware, the actors and the API to enqueue jobs.

    jobs = SoulspotJobs(load_settings())
    job_id = jobs.enqueue_download("Daft Punk - Around the World")
    jobs.job(job_id).state   # queued, searching, downloading, enriching, done, failed, deferred
    jobs.cancel_job(job_id)  # cancelled: its pending message ends without running

Worker processes load :mod:`soulspot_jobs.worker`, which builds one of these from the settings.
Everything a deployment shares is reached from here: ``breakers`` (one breaker per service),
``deferred`` (the deferred index), ``store`` (the job records), ``dead_letters()``.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from soulspot_jobs.broker import build_broker
from soulspot_jobs.circuit_breaker import Breakers
from soulspot_jobs.deferral.dead_letters import DeadLetter, DeadLetters
from soulspot_jobs.deferral.index import DeferredIndex, DeferredJob
from soulspot_jobs.errors import InvalidJobError, JobAlreadyFinal, JobNotFound
from soulspot_jobs.jobs.actors import downloads, metadata, playlists
from soulspot_jobs.jobs.queues import declare_queues, send_first_step
from soulspot_jobs.jobs.records import FINAL_STATES, REQUEUED_NOTE, Job, JobState, Update
from soulspot_jobs.jobs.runtime import Runtime
from soulspot_jobs.jobs.steps import CancelledJobs
from soulspot_jobs.jobs.validation import (
    MAX_TEXT_LENGTH,
    parse_enrichment,
    parse_playlist_id,
    parse_query,
)
from soulspot_jobs.middleware.breakers import CircuitBreakerMiddleware
from soulspot_jobs.middleware.orphans import OrphanCheck
from soulspot_jobs.settings import Settings

#: The actors whose messages carry a job id as their only argument.
JOB_ACTORS = frozenset({"search_track", "poll_download", "enrich_metadata", "import_playlist"})


class SoulspotJobs:
    """Everything a producer or a worker process needs, built from one :class:`Settings`."""

    def __init__(self, settings: Settings, *, url: str | None = None, **options: Any) -> None:
        self.settings = settings
        self.broker = build_broker(
            settings,
            url=url,
            on_defer=self._on_defer,
            on_dead_letter=self._on_dead_letter,
            **options,
        )
        self.broker.add_middleware(CurrentMessage())
        self.keys = self.broker.keys
        #: One breaker per service, shared by the middleware, the clients and the health checks.
        self.breakers: Breakers = self.broker.breakers
        #: The messages deferred now, per service, and why.
        self.deferred: DeferredIndex = self.broker.deferred
        self.runtime = Runtime(settings, self.broker.redis, self.keys, self.breakers)
        self.store = self.runtime.store
        downloads.declare(self.broker, self.runtime)
        metadata.declare(self.broker, self.runtime)
        playlists.declare(self.broker, self.runtime, self._enqueue_track)
        self.broker.add_middleware(
            OrphanCheck(
                settings.recovery,
                self.store,
                job_actors=JOB_ACTORS,
                lease_key=self.keys.orphan_check_lease,
            )
        )
        admission = next(
            m for m in self.broker.middleware if isinstance(m, CircuitBreakerMiddleware)
        )
        self.broker.add_middleware(
            CancelledJobs(self.store, job_actors=JOB_ACTORS, admission=admission),
            after=CircuitBreakerMiddleware,
        )
        declare_queues(self.broker)

    def actor(self, name: str) -> dramatiq.Actor:
        return self.broker.get_actor(name)

    def enqueue_download(self, query: str, **details: Any) -> str:
        """Search slskd for ``query`` ("Artist - Title"), download the best file, enrich it.

        ``query`` must be text of 1 to 300 characters (after stripping) without control
        characters; otherwise :class:`~soulspot_jobs.errors.InvalidJobError` is raised and no
        job is recorded.
        """
        query = parse_query(query)
        artist, _, title = query.partition(" - ")
        if not title:
            artist, title = "", query
        job = self.store.create(
            "download", query=query, artist=artist.strip(), title=title.strip(), **details
        )
        send_first_step(self.actor("search_track"), job.id)
        return job.id

    def enqueue_playlist(self, playlist_id: str) -> str:
        """Import a Spotify playlist: one download job per track.

        ``playlist_id`` is the playlist's id, its ``https://open.spotify.com/playlist/...`` link
        or its ``spotify:playlist:...`` URI (recorded as the bare id); anything else raises
        :class:`~soulspot_jobs.errors.InvalidJobError` and records no job.
        """
        job = self.store.create("playlist", playlist_id=parse_playlist_id(playlist_id))
        send_first_step(self.actor("import_playlist"), job.id)
        return job.id

    def enqueue_enrichment(
        self,
        artist: str | None = None,
        title: str | None = None,
        *,
        isrc: str | None = None,
        mbid: str | None = None,
        duration_ms: int | None = None,
    ) -> str:
        """Look a recording up on MusicBrainz by ``mbid``, ``isrc``, or ``artist`` and ``title``.

        Each argument given is checked (an ISRC like ``USRC17607839``, an mbid that is a UUID,
        text without control characters); at least one way to look the recording up is needed.
        Otherwise :class:`~soulspot_jobs.errors.InvalidJobError` is raised and no job recorded.
        """
        details = parse_enrichment(artist, title, isrc=isrc, mbid=mbid, duration_ms=duration_ms)
        job = self.store.create("enrichment", **details)
        send_first_step(self.actor("enrich_metadata"), job.id)
        return job.id

    def _enqueue_track(self, query: str, **details: Any) -> str:
        """:meth:`enqueue_download` for one track of a playlist being imported.

        A track whose query cannot be searched (a control character in its title, say) is
        recorded as a ``failed`` download job with the reason: one odd track neither stops the
        import (which would be retried, enqueueing its other tracks again) nor vanishes.
        """
        try:
            return self.enqueue_download(query, **details)
        except InvalidJobError as exc:
            shown = query[:MAX_TEXT_LENGTH] if isinstance(query, str) else repr(query)
            job = self.store.create("download", query=shown, **details)
            self.store.update(job.id, state=JobState.FAILED, last_error=str(exc))
            return job.id

    def dead_letters(self) -> DeadLetters:
        """The broker's dead letters (Redis broker). Requeueing one of a job's steps puts the
        job's record back to ``queued`` first, so a worker never finds it ``failed``; deleting
        one leaves its job ``failed``, noted in its history (a job that was not finished yet
        becomes ``failed``: nothing is left to run it)."""
        return DeadLetters(
            self.broker,
            reasons=self.broker.dead_letter_reasons,
            on_requeue=lambda letter: self._on_requeue(letter.message),
            on_delete=self._on_delete,
        )

    def job(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def cancel_job(self, job_id: str, *, by: str = "an operator") -> Job:
        """Stop the job ``job_id``: its record becomes ``cancelled`` (a final state; the history
        says ``cancelled by <by>``) and its pending message, queued, delayed or deferred, ends
        without calling any upstream when it comes up (logged ``job.cancelled``; acknowledged,
        never retried nor dead-lettered). A deferred message leaves the deferred index now.
        A step already running finishes its current call; it can no longer change the record.

        Raises :class:`~soulspot_jobs.errors.JobNotFound` when there is no such job, and
        :class:`~soulspot_jobs.errors.JobAlreadyFinal` when it is done, failed or cancelled.
        """
        before = self.store.get(job_id)
        if before is None:
            raise JobNotFound(job_id)
        outcome = self.store.update(
            job_id, state=JobState.CANCELLED, note=f"cancelled by {by}", unless_final=True
        )
        if outcome is Update.NO_RECORD:  # expired meanwhile
            raise JobNotFound(job_id)
        if outcome in (Update.FINAL, Update.CANCELLED):
            now = self.store.get(job_id)
            raise JobAlreadyFinal(job_id, (now or before).state.value)
        if before.state is JobState.DEFERRED and before.deferred_message_id and before.service:
            self.deferred.remove(before.service, before.deferred_message_id)
            self.deferred.flush()
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def close(self) -> None:
        """Close the clients, the breakers' backend (its view watcher) and the broker."""
        self.runtime.close()
        self.broker.close()

    def _on_defer(self, message: Any, deferred: DeferredJob) -> None:
        """A job step deferred: its job shows ``deferred``, with why and which message waits.
        Cancelled meanwhile, the job keeps its record and the message leaves the index (it
        will be skipped when it comes up)."""
        job_id = job_id_of(message)
        if job_id is None:
            return
        updated = self.store.update(
            job_id,
            state=JobState.DEFERRED,
            service=deferred.service,
            deferred_until=deferred.eta,
            deferred_message_id=deferred.message_id,
            last_error=deferred.reason,
        )
        if updated is Update.CANCELLED:
            self.deferred.remove(deferred.service, deferred.message_id)

    def _on_dead_letter(self, message: Any, reason: str) -> None:
        """A job step dead-lettered with a reason (its deferral budget spent, say) ends its job
        as ``failed`` with the reason; requeueing the dead letter reopens it."""
        job_id = job_id_of(message)
        job = None if job_id is None else self.store.get(job_id)
        if job is not None and job.state not in FINAL_STATES:
            self.store.update(job.id, state=JobState.FAILED, last_error=f"dead-lettered: {reason}")

    def _on_requeue(self, message: Any) -> None:
        job_id = job_id_of(message)
        if job_id is not None:
            self.store.reopen(job_id, REQUEUED_NOTE)

    def _on_delete(self, letter: DeadLetter) -> None:
        """A dead letter deleted: its job stays (or, unfinished, becomes) ``failed``, with the
        deletion in its history; a done or cancelled job keeps its state."""
        job_id = None if letter.message is None else job_id_of(letter.message)
        if job_id is not None:
            note = f"dead letter {letter.message_id} deleted"
            self.store.update(job_id, state=JobState.FAILED, note=note)


def job_id_of(message: Any) -> str | None:
    """The job a message of one of the job actors is a step of (``None``: not a job step)."""
    if message.actor_name in JOB_ACTORS and message.args and isinstance(message.args[0], str):
        return message.args[0]
    return None
