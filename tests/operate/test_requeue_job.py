"""A requeued dead letter of one of our jobs runs to the end, and its job record leaves `failed`
(end to end: the jobs app, a real Worker, the fake MusicBrainz over loopback)."""

from __future__ import annotations

import time

from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.deferral.dead_letters import DeadLetters
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import REQUEUED_NOTE, JobState
from tests.jobs.conftest import Fakes, fakes, finished, running, settings_for  # noqa: F401
from tests.polling import wait_until

from .conftest import Cli

#: A day and an hour in milliseconds: past the default deferral budget of a day.
OVERDUE_MS = 25 * 60 * 60 * 1000


def test_a_requeued_dead_letter_of_a_failed_job_runs_and_the_job_is_done(
    cli: Cli,
    redis_url: str,
    fakes: Fakes,  # noqa: F811
) -> None:
    # Given MusicBrainz forced OPEN and the jobs app running
    cli("open", "musicbrainz", "--for", "300")
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # And an enrichment message deferred for longer than its budget: it is dead-lettered
        track = CATALOG[0]
        job_id = app.store.create("enrichment", artist=track.artist, title=track.title).id
        first_deferred_at = int(time.time() * 1000) - OVERDUE_MS
        message = app.actor("enrich_metadata").send_with_options(
            args=(job_id,), circuit_breaker_first_deferred_at=first_deferred_at
        )
        letters = DeadLetters(app.broker)
        wait_until(lambda: len(letters.list()) == 1, "the dead letter")
        # And so its job record says failed, with the reason
        wait_until(lambda: app.job(job_id).state is JobState.FAILED, "the job failed")
        assert app.job(job_id).last_error.startswith("dead-lettered: deferred ")

        # When MusicBrainz is back and the operator requeues the dead letter
        cli("reset", "musicbrainz")
        view = app.breakers.backend._views["musicbrainz-api"]  # the worker's own view follows
        wait_until(lambda: view.state is CircuitState.CLOSED, "the worker to see it CLOSED")
        result = cli("dead-letters", "requeue", message.message_id)

        # Then the job record left failed at once, and the job runs to done
        assert result.exit_code == 0, result.stderr
        (job,) = finished(app, [job_id])
    assert job.state is JobState.DONE
    states = [(entry["state"], entry["note"] or "") for entry in job.history]
    [failed_at] = [n for n, (state, _) in enumerate(states) if state == "failed"]
    assert states[failed_at][1].startswith("dead-lettered: ")
    assert states[failed_at + 1] == ("queued", REQUEUED_NOTE)
    assert letters.list() == []
