"""``import_playlist`` (service ``spotify-api``): one download job per track of a playlist.

Entries that are not tracks to download (podcast episodes, local files, tracks no longer on
Spotify) are left out and counted in the job's details (``skipped``), so that nothing is dropped
without a trace. A playlist Spotify refuses to the client's credential (403: an app token may not
read a user's playlist) fails the job with a message saying which credential is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import dramatiq

from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.jobs.runtime import Runtime
from soulspot_jobs.jobs.steps import BACKOFF, job_step

SERVICE = "spotify-api"
MAX_RETRIES = 3


def declare(
    broker: dramatiq.Broker, runtime: Runtime, enqueue_download: Callable[..., str]
) -> None:
    """Declare ``import_playlist`` on ``broker``; it creates jobs with ``enqueue_download``."""
    store = runtime.store

    @dramatiq.actor(broker=broker, service=SERVICE, max_retries=MAX_RETRIES, **BACKOFF)
    @job_step(store, JobState.SEARCHING, SERVICE, max_retries=MAX_RETRIES)
    def import_playlist(job_id: str) -> None:
        playlist_id = store.get(job_id).details["playlist_id"]
        playlist = runtime.spotify.get_playlist(playlist_id)
        job_ids = [
            enqueue_download(
                track.query,
                isrc=track.isrc,
                duration_ms=track.duration_ms,
                spotify_id=track.id,
                playlist_job_id=job_id,
            )
            for track in playlist.tracks
        ]
        store.update(
            job_id,
            state=JobState.DONE,
            details={
                "name": playlist.name,
                "tracks": len(playlist.tracks),
                "skipped": dict(playlist.skipped),
                "jobs": job_ids,
            },
        )
