"""End to end: real Worker, real Redis, the fake upstreams over loopback."""

from __future__ import annotations

import time

import dramatiq
import structlog
from dramatiq.middleware import Middleware

from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.deferral.options import DEFERRALS, DEFERRED_BY, FIRST_DEFERRED_AT
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.spotify import DEMO_PLAYLIST
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from tests.jobs.conftest import Fakes, finished, running, settings_for
from tests.polling import wait_until

DAFT_PUNK = CATALOG[0]


class RetriesSeen(Middleware):
    """Records the ``retries`` option of every message a worker picks up."""

    def __init__(self) -> None:
        self.highest = 0

    def before_process_message(self, broker: dramatiq.Broker, message: object) -> None:
        self.highest = max(self.highest, message.options.get("retries", 0))  # type: ignore[attr-defined]


def test_a_download_job_searches_downloads_polls_and_enriches_to_done(
    redis_url: str, fakes: Fakes
) -> None:
    # Given the jobs app on healthy fakes
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # When a user enqueues a download
        job_id = app.enqueue_download(f"{DAFT_PUNK.artist} - {DAFT_PUNK.title}")

        # Then the whole chain runs and the job is done with the best file and its metadata
        [job] = finished(app, [job_id])
    assert job.state is JobState.DONE, job
    assert job.details["transfer_state"] == "Completed, Succeeded"
    assert job.details["filename"].endswith(".flac")
    metadata = job.details["metadata"]
    assert metadata["recording_id"] == DAFT_PUNK.mbid
    assert metadata["title"] == DAFT_PUNK.title
    assert DAFT_PUNK.artist in metadata["artist_credit"]
    assert DAFT_PUNK.isrc in metadata["isrcs"]


def test_an_slskd_outage_mid_chain_defers_slskd_jobs_while_musicbrainz_jobs_run(
    redis_url: str, fakes: Fakes
) -> None:
    # Given downloads in progress on slow transfers, and a breaker that opens after 2 failures
    fakes.slskd.transfer_duration = 2.0
    app = SoulspotJobs(settings_for(redis_url, fakes, failure_threshold=2, timeout=1.0))
    retries = RetriesSeen()
    app.broker.add_middleware(retries)
    with structlog.testing.capture_logs() as logs, running(app):
        downloads = [app.enqueue_download(f"{t.artist} - {t.title}") for t in CATALOG[:3]]
        wait_until(
            lambda: all(app.job(j).state is JobState.DOWNLOADING for j in downloads),
            what="every download to be in progress",
        )

        # When slskd goes down (connections refused) in the middle of the downloads
        fakes.slskd.faults.outage(3.0, mode="refuse")
        enrichments = [app.enqueue_enrichment(t.artist, t.title) for t in CATALOG[:3]]

        # Then the MusicBrainz jobs complete while slskd is still down ...
        enriched = finished(app, enrichments)
        assert [job.state for job in enriched] == [JobState.DONE] * 3
        assert app.breakers["slskd-api"].state is not CircuitState.CLOSED
        # ... and after slskd recovers every download completes
        done = finished(app, downloads)

    assert [job.state for job in done] == [JobState.DONE] * 3
    deferred = [e for e in logs if e.get("event_name") == "job.deferred"]
    assert deferred and {e["service"] for e in deferred} == {"slskd-api"}
    assert {e["actor"] for e in deferred} <= {"search_track", "poll_download"}
    # The outage cost a message a retry only for an attempt that ran and failed: the failure
    # before the breaker opened, and a failed HALF_OPEN trial; every refusal was a deferral
    trials = len([e for e in logs if e.get("event_name") == "circuit_breaker.half_open"])
    assert retries.highest <= 1 + trials


def test_a_musicbrainz_404_fails_only_that_job(redis_url: str, fakes: Fakes) -> None:
    # Given the jobs app on healthy fakes
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # When one enrichment asks for a recording MusicBrainz does not have, and one a real one
        missing = app.enqueue_enrichment(mbid="00000000-0000-4000-8000-000000000000")
        present = app.enqueue_enrichment(DAFT_PUNK.artist, DAFT_PUNK.title)
        failed, done = finished(app, [missing, present])

    # Then only that job failed, with the reason, and the breaker did not count it
    assert failed.state is JobState.FAILED
    assert "404" in failed.last_error
    assert done.state is JobState.DONE
    stats = app.breakers["musicbrainz-api"].stats
    assert stats.state is CircuitState.CLOSED
    assert stats.total_failures == 0


def test_a_playlist_import_enqueues_one_download_per_track_and_they_finish(
    redis_url: str, fakes: Fakes
) -> None:
    # Given the demo playlist on the fake Spotify
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # When a user imports it
        [playlist] = finished(app, [app.enqueue_playlist(DEMO_PLAYLIST)])
        tracks = finished(app, playlist.details["jobs"], timeout=60)

    # Then one download job per track ran to the end
    assert playlist.state is JobState.DONE
    assert playlist.details["tracks"] == len(CATALOG)
    assert [job.state for job in tracks] == [JobState.DONE] * len(CATALOG)


def test_spotify_retry_after_is_honoured_by_every_worker(redis_url: str, fakes: Fakes) -> None:
    # Given a Spotify that answers the next request with 429 Retry-After: 2, and a first worker
    # whose playlist import runs into it
    first = SoulspotJobs(settings_for(redis_url, fakes))
    second = SoulspotJobs(settings_for(redis_url, fakes))
    fakes.spotify.faults.rate_limit(1, retry_after=2)
    with running(first, threads=2):
        job_a = first.enqueue_playlist(DEMO_PLAYLIST)
        breaker = first.breakers["spotify-api"]
        wait_until(lambda: breaker.state is CircuitState.OPEN, "the 429 to open the breaker")

    # When another worker (its own breaker view) takes over, and a second import arrives
    with running(second, threads=2):
        job_b = second.enqueue_playlist(DEMO_PLAYLIST)
        imports = finished(second, [job_a, job_b])

    # Then both imports finish, and nobody called Spotify again before Retry-After passed:
    # the first request was the one answered 429, every later one came at least 2 s after it
    assert [job.state for job in imports] == [JobState.DONE] * 2
    first_request, *later = fakes.spotify.request_times
    assert later and min(later) - first_request >= 2.0


def test_a_message_for_an_unknown_job_goes_to_the_dead_letter_queue_with_a_reason(
    redis_url: str, fakes: Fakes
) -> None:
    # Given the jobs app
    app = SoulspotJobs(settings_for(redis_url, fakes))
    dead_letters = f"{app.settings.key_prefix}:dramatiq:default.XQ.msgs"
    with running(app):
        # When a message names a job that has no record
        message = app.actor("search_track").send("no-such-job")
        wait_until(lambda: app.broker.client.hlen(dead_letters) == 1, "the dead letter")

    # Then it was dead-lettered at once (no retries) with the reason kept beside it
    [raw] = app.broker.client.hvals(dead_letters)
    dead = dramatiq.Message.decode(raw)
    assert dead.message_id == message.message_id
    assert dead.options.get("retries", 0) == 0
    [letter] = app.dead_letters().list()
    assert "no job record 'no-such-job'" in letter.reason


def test_a_job_whose_step_spends_its_deferral_budget_fails_with_the_reason_and_requeue_reopens_it(
    redis_url: str, fakes: Fakes
) -> None:
    # Given the jobs app, slskd's breaker held OPEN, and a download job whose search has been
    # deferred for longer than its budget (a minute, against one second)
    app = SoulspotJobs(settings_for(redis_url, fakes), max_deferral=1000)
    breaker = app.breakers["slskd-api"]
    breaker.force_open_sync(60.0)
    song = {"artist": DAFT_PUNK.artist, "title": DAFT_PUNK.title}
    job_id = app.store.create("download", query="{artist} - {title}".format(**song), **song).id
    long_ago = int((time.time() - 60) * 1000)
    app.actor("search_track").send_with_options(
        args=(job_id,), **{FIRST_DEFERRED_AT: long_ago, DEFERRALS: 5, DEFERRED_BY: "slskd-api"}
    )
    with running(app):
        # When a worker meets it, refused again
        [job] = finished(app, [job_id])

        # Then the job is failed with the dead letter's reason, not left "deferred"
        assert job.state is JobState.FAILED, job
        assert job.last_error.startswith("dead-lettered: deferred "), job.last_error
        assert "past the budget" in job.last_error

        # And once slskd is back, requeueing the dead letter reopens the job, which completes
        breaker.reset_sync()
        [letter] = app.dead_letters().list()
        app.dead_letters().requeue(letter.message_id)
        assert app.job(job_id).state is JobState.QUEUED
        [job] = finished(app, [job_id])
    assert job.state is JobState.DONE, job
