"""``enqueue_*`` refuse bad arguments at the door: a clear error, no record, no message."""

from __future__ import annotations

import dataclasses

import pytest
import redis

from soulspot_jobs.errors import InvalidJobError
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.spotify import DEMO_PLAYLIST
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from tests.jobs.conftest import Fakes, finished, running, settings_for

#: Bad input is one of the faults of the fault suite (``pytest -m faults``).
pytestmark = pytest.mark.faults


def _nothing_enqueued(app: SoulspotJobs, client: redis.Redis) -> None:
    """No job record and no message anywhere in Redis."""
    assert app.store.jobs() == []
    keys = [key.decode() for key in client.keys("*")]
    assert not [key for key in keys if ":jobs:" in key or ":dramatiq:" in key], keys


@pytest.mark.parametrize(
    ("enqueue", "argument"),
    [
        (lambda app: app.enqueue_download(None), "query"),
        (lambda app: app.enqueue_download(123), "query"),
        (lambda app: app.enqueue_download(b"x"), "query"),
        (lambda app: app.enqueue_download("A" * 100_000), "query"),
        (lambda app: app.enqueue_download("Daft Punk\r\nX-Injected: 1"), "query"),
        (lambda app: app.enqueue_playlist("not a playlist"), "playlist"),
        (lambda app: app.enqueue_playlist(None), "playlist"),
        (lambda app: app.enqueue_playlist(f"spotify:album:{DEMO_PLAYLIST}"), "playlist"),
        (lambda app: app.enqueue_enrichment("Massive Attack"), "enrichment"),
        (lambda app: app.enqueue_enrichment(isrc="USRC1760783"), "isrc"),
        (lambda app: app.enqueue_enrichment(mbid="123"), "mbid"),
    ],
)
def test_a_bad_argument_raises_and_creates_no_record(
    redis_url: str, redis_client: redis.Redis, fakes: Fakes, enqueue, argument: str
) -> None:
    # Given the jobs app on a real Redis
    app = SoulspotJobs(settings_for(redis_url, fakes))
    try:
        # When a job is asked for with an argument it could never run with
        with pytest.raises(InvalidJobError) as raised:
            enqueue(app)

        # Then the error names the argument, and nothing was recorded or enqueued
        assert raised.value.argument == argument
        assert str(raised.value).startswith(f"invalid {argument}: ")
        _nothing_enqueued(app, redis_client)
    finally:
        app.close()


def test_normalised_arguments_are_what_the_record_holds(redis_url: str, fakes: Fakes) -> None:
    # Given the jobs app
    app = SoulspotJobs(settings_for(redis_url, fakes))
    try:
        # When jobs are enqueued with arguments in their loose forms
        download = app.enqueue_download("  Daft Punk - Around the World  ")
        playlist = app.enqueue_playlist(
            f"https://open.spotify.com/intl-de/playlist/{DEMO_PLAYLIST}?si=abc"
        )
        enrichment = app.enqueue_enrichment(isrc="us-rc1-76-07839")

        # Then the records hold the normalised values
        assert app.job(download).details["query"] == "Daft Punk - Around the World"
        assert app.job(download).details["title"] == "Around the World"
        assert app.job(playlist).details["playlist_id"] == DEMO_PLAYLIST
        assert app.job(enrichment).details["isrc"] == "USRC17607839"
    finally:
        app.close()


@pytest.mark.parametrize(
    "reference",
    [
        f"https://open.spotify.com/playlist/{DEMO_PLAYLIST}?si=1a2b3c",
        f"spotify:playlist:{DEMO_PLAYLIST}",
    ],
)
def test_a_playlist_given_by_link_or_uri_is_imported(
    redis_url: str, fakes: Fakes, reference: str
) -> None:
    # Given the jobs app with a worker on the fakes
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # When a user imports the demo playlist by its link or URI
        [playlist] = finished(app, [app.enqueue_playlist(reference)])

    # Then Spotify was asked for the right playlist: one download job per track
    assert playlist.state is JobState.DONE, playlist
    assert playlist.details["tracks"] == len(CATALOG)


def test_a_playlist_track_that_cannot_be_searched_fails_alone(redis_url: str, fakes: Fakes) -> None:
    # Given a playlist whose first track has a control character in its title
    odd = dataclasses.replace(
        CATALOG[0], title="Around\x07the World", spotify_id="0OddTrack0000000000000"
    )
    fakes.spotify.add_playlist("0OddPlaylist0000000000", [odd, CATALOG[1]])
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # When it is imported
        [playlist] = finished(app, [app.enqueue_playlist("0OddPlaylist0000000000")])
        odd_job, good_job = finished(app, playlist.details["jobs"])

    # Then the import is done once, the odd track's job failed with the reason, the other ran
    assert playlist.state is JobState.DONE, playlist
    assert playlist.attempts == 1
    assert odd_job.state is JobState.FAILED
    assert "invalid query: contains the control character '\\x07'" in odd_job.last_error
    assert good_job.state is JobState.DONE, good_job
