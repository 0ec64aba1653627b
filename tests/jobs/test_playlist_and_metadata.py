"""Playlist imports and metadata enrichment end to end: real Worker, real Redis, the fake
Spotify and MusicBrainz speaking the real services' rules over loopback."""

from __future__ import annotations

from pydantic import SecretStr

from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.spotify import DEFAULT_USER, Episode, LocalFile
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from tests.jobs.conftest import Fakes, finished, running, settings_for

MIXED = "4rQ0vXJmEJDCmvl2ZBLlUS"
OWNED = "1Je1IMUlBXcx1Fz0WE7oPT"


def test_a_playlist_import_skips_episodes_local_files_and_removed_tracks_and_counts_them(
    redis_url: str, fakes: Fakes
) -> None:
    # Given a playlist mixing two tracks with an episode, a local file and a removed track
    entries = [CATALOG[0], Episode("Tech Talk", "Breakers"), LocalFile("Me", "Tape"), None]
    fakes.spotify.add_playlist(MIXED, [*entries, CATALOG[1]], name="Mixed bag")
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # When it is imported
        [playlist] = finished(app, [app.enqueue_playlist(MIXED)])

    # Then one download job per track was created, and the rest is accounted for
    assert playlist.state is JobState.DONE, playlist
    assert playlist.details["name"] == "Mixed bag"
    assert playlist.details["tracks"] == 2
    assert len(playlist.details["jobs"]) == 2
    assert playlist.details["skipped"] == {"episodes": 1, "local": 1, "unavailable": 1}
    # And the entries were read through /items
    assert ("GET", f"/v1/playlists/{MIXED}/items") in fakes.spotify.requests


def test_a_playlist_the_app_may_not_read_fails_its_job_saying_which_credential_is_needed(
    redis_url: str, fakes: Fakes
) -> None:
    """Spotify's Web API answers ``403 {"error": {"status": 403, "message": ...}}`` to a
    playlist the token may not read (Spotify's Web API reference, Get Playlist Items, and its
    error object): one resource refused, not wrong settings, so the job fails and the breaker
    counts nothing."""
    # Given a user's playlist, and workers with only the app's client credentials
    fakes.spotify.add_playlist(OWNED, [CATALOG[0]], owner=DEFAULT_USER)
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # When it is imported
        [playlist] = finished(app, [app.enqueue_playlist(OWNED)])

    # Then the job failed at once with Spotify's 403 and what to configure instead
    assert playlist.state is JobState.FAILED
    assert "403" in playlist.last_error
    assert "SPOTIFY_REFRESH_TOKEN" in playlist.last_error
    assert playlist.attempts == 1
    # And the Spotify breaker counted nothing
    stats = app.breakers["spotify-api"].stats
    assert stats.state is CircuitState.CLOSED
    assert stats.total_failures == 0


def test_with_a_refresh_token_the_workers_import_a_users_playlist(
    redis_url: str, fakes: Fakes
) -> None:
    # Given a user's playlist, and workers configured with that user's refresh token
    fakes.spotify.add_playlist(OWNED, [CATALOG[0], CATALOG[1]], owner=DEFAULT_USER)
    settings = settings_for(redis_url, fakes)
    settings.spotify.refresh_token = SecretStr(fakes.spotify.refresh_token)
    app = SoulspotJobs(settings)
    with running(app):
        # When it is imported
        [playlist] = finished(app, [app.enqueue_playlist(OWNED)])

    # Then both tracks became download jobs
    assert playlist.state is JobState.DONE, playlist
    assert playlist.details["tracks"] == 2


def test_an_isrc_enrichment_follows_up_with_a_recording_lookup_for_the_release(
    redis_url: str, fakes: Fakes
) -> None:
    # Given a track known by its ISRC
    track = CATALOG[1]
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # When it is enriched
        [job] = finished(app, [app.enqueue_enrichment(isrc=track.isrc)])

    # Then the ISRC lookup (which lists no releases) was followed by the recording's lookup,
    # and the job records the release with its type
    assert job.state is JobState.DONE, job
    metadata = job.details["metadata"]
    assert metadata["recording_id"] == track.mbid
    assert (metadata["release_id"], metadata["release"]) == (track.release_mbid, track.album)
    assert metadata["release_type"] == "Album"
    assert fakes.musicbrainz.requests == [
        ("GET", f"/ws/2/isrc/{track.isrc}"),
        ("GET", f"/ws/2/recording/{track.mbid}"),
    ]
    # And the second request waited for its slot of the shared rate limit
    assert fakes.musicbrainz.rate_limited == 0
    first, second = fakes.musicbrainz.accepted_times
    assert second - first >= fakes.musicbrainz.min_interval - fakes.musicbrainz.tolerance


def test_an_isrc_enrichment_deferred_before_its_recording_lookup_resumes_there(
    redis_url: str, fakes: Fakes
) -> None:
    # Given workers whose MusicBrainz limiter spaces requests wider than a worker may wait for
    # its slot (5 s), so the follow-up lookup cannot run right after the ISRC lookup
    track = CATALOG[2]
    app = SoulspotJobs(settings_for(redis_url, fakes, musicbrainz_interval=5.5))
    with running(app):
        # When a track is enriched by its ISRC
        [job] = finished(app, [app.enqueue_enrichment(isrc=track.isrc)])

    # Then the job was deferred once, and on its next run went straight to the recording
    # lookup: the ISRC was asked for once, and the release is recorded
    assert job.state is JobState.DONE, job
    assert job.details["metadata"]["release_id"] == track.release_mbid
    assert fakes.musicbrainz.requests == [
        ("GET", f"/ws/2/isrc/{track.isrc}"),
        ("GET", f"/ws/2/recording/{track.mbid}"),
    ]
    assert job.attempts == 2
