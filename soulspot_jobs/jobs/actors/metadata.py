"""``enrich_metadata`` (service ``musicbrainz-api``): find the track's MusicBrainz recording.

By ISRC when the job knows one (falling back to artist and title when MusicBrainz has no such
ISRC), by recording id when given, else by artist and title; the best match by score and
duration (:func:`~soulspot_jobs.clients.musicbrainz.best_match`) is recorded on the job. An ISRC
lookup carries no releases, so its match is looked up once more by recording id (a second
request, spaced by the shared rate limiter like every other) to record its release. The match is
remembered first (``details["isrc_match"]``): a job deferred while waiting for that request's
slot resumes at the recording lookup instead of asking for the ISRC again.
"""

from __future__ import annotations

import dramatiq

from soulspot_jobs.clients.musicbrainz import Recording, best_match
from soulspot_jobs.errors import NotFoundError
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.jobs.runtime import Runtime
from soulspot_jobs.jobs.steps import BACKOFF, JobFailed, job_step

SERVICE = "musicbrainz-api"
MAX_RETRIES = 3


def declare(broker: dramatiq.Broker, runtime: Runtime) -> None:
    """Declare ``enrich_metadata`` on ``broker``."""
    store = runtime.store

    @dramatiq.actor(broker=broker, service=SERVICE, max_retries=MAX_RETRIES, **BACKOFF)
    @job_step(store, JobState.ENRICHING, SERVICE, max_retries=MAX_RETRIES)
    def enrich_metadata(job_id: str) -> None:
        details = store.get(job_id).details
        musicbrainz = runtime.musicbrainz
        duration_ms = details.get("duration_ms")
        mbid = details.get("mbid") or details.get("isrc_match")
        if mbid:
            match: Recording | None = musicbrainz.get_recording(mbid)
        else:
            recordings: list[Recording] = []
            by_isrc = False
            if details.get("isrc"):
                try:
                    recordings = musicbrainz.lookup_isrc(details["isrc"])
                    by_isrc = True
                except NotFoundError:
                    if not details.get("title"):
                        raise
            if not recordings and details.get("title"):
                recordings = musicbrainz.search_recordings(
                    details.get("artist", ""), details["title"]
                )
            match = best_match(recordings, duration_ms=duration_ms)
            if match is not None and by_isrc and not match.releases:
                store.update(job_id, details={"isrc_match": match.id})
                match = musicbrainz.get_recording(match.id)
        if match is None:
            raise JobFailed("MusicBrainz has no recording that matches well enough")
        store.update(job_id, state=JobState.DONE, details={"metadata": describe(match)})


def describe(recording: Recording) -> dict:
    """The recording as the job record keeps it."""
    release = recording.releases[0] if recording.releases else None
    return {
        "recording_id": recording.id,
        "title": recording.title,
        "artist_credit": recording.artist_credit,
        "artist_ids": list(recording.artist_ids),
        "length_ms": recording.length_ms,
        "isrcs": list(recording.isrcs),
        "release_id": release.id if release else None,
        "release": release.title if release else None,
        "release_type": release.primary_type if release else None,
        "date": (release.date if release and release.date else recording.first_release_date),
        "score": recording.score,
    }
