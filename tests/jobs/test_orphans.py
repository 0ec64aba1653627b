"""Jobs whose messages vanished (Redis lost data, or a worker dropped them) are requeued at
their current step, then failed with the reason: never left in a non-final state."""

from __future__ import annotations

import structlog

from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.middleware.orphans import next_step
from soulspot_jobs.settings import RecoverySettings
from tests.jobs.conftest import Fakes, finished, running, settings_for


def _app(redis_url: str, fakes: Fakes, *, requeues: int) -> SoulspotJobs:
    settings = settings_for(redis_url, fakes)
    settings.recovery = RecoverySettings(
        orphan_after=0.3, orphan_check_interval=0.2, orphan_requeues=requeues
    )
    return SoulspotJobs(settings)


def _orphan(app: SoulspotJobs) -> str:
    """A download job whose record exists but whose message never reached Redis."""
    track = CATALOG[2]
    query = f"{track.artist} - {track.title}"
    return app.store.create("download", query=query, artist=track.artist, title=track.title).id


def test_a_job_whose_messages_vanished_is_requeued_and_done(redis_url: str, fakes: Fakes) -> None:
    # Given a job record with no message anywhere
    app = _app(redis_url, fakes, requeues=3)
    job_id = _orphan(app)

    # When a worker runs
    with structlog.testing.capture_logs() as logs, running(app):
        # Then the orphan check requeues it at its first step, and it runs to done
        [job] = finished(app, [job_id])

    assert job.state is JobState.DONE, job
    assert job.details["orphan_requeues"] == 1
    [report] = [e for e in logs if e.get("event_name") == "job.orphaned"]
    assert (report["action"], report["step"], report["log_level"]) == (
        "requeued",
        "search_track",
        "error",
    )


def test_a_job_whose_messages_keep_vanishing_is_failed_with_the_reason(
    redis_url: str, fakes: Fakes
) -> None:
    # Given a job with no message anywhere, and no requeue allowed
    app = _app(redis_url, fakes, requeues=0)
    job_id = _orphan(app)

    # When a worker runs, Then the job is marked failed, saying why
    with running(app):
        [job] = finished(app, [job_id])
    assert job.state is JobState.FAILED
    assert "messages vanished" in job.last_error


def test_a_job_continues_from_the_step_its_record_shows(redis_url: str, fakes: Fakes) -> None:
    # Given records at different steps
    app = SoulspotJobs(settings_for(redis_url, fakes))
    try:
        store = app.store
        searching = store.create("download", query="a - b")
        downloading = store.create("download", query="a - b")
        store.update(downloading.id, state=JobState.DOWNLOADING, details={"transfer_id": "t"})
        enriching = store.create("download", query="a - b")
        store.update(enriching.id, state=JobState.ENRICHING, details={"transfer_id": "t"})
        playlist = store.create("playlist", playlist_id="p")

        # Then each resumes at the step that repeats no finished work
        steps = [next_step(store.get(j.id)) for j in (searching, downloading, enriching, playlist)]
        assert steps == ["search_track", "poll_download", "enrich_metadata", "import_playlist"]
    finally:
        app.close()
