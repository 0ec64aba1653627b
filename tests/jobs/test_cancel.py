"""Cancelling a job: its record becomes ``cancelled`` (final, frozen), and its pending message,
queued or deferred, ends without calling any upstream: skipped, acknowledged, not retried, not
dead-lettered, logged ``job.cancelled`` once."""

from __future__ import annotations

import time

import pytest
import redis
import structlog

from soulspot_jobs.deferral.options import DEFERRED_BY
from soulspot_jobs.errors import JobAlreadyFinal, JobNotFound
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import FINAL_STATES, JobState, JobStore, Update
from soulspot_jobs.middleware.orphans import OrphanCheck
from soulspot_jobs.settings import RecoverySettings
from tests.jobs.conftest import Fakes, running, settings_for
from tests.polling import wait_until

DAFT_PUNK = CATALOG[0]
#: Seconds a test waits for a worker to pick a message up.
PICKUP_DEADLINE = 10.0


def _query() -> str:
    return f"{DAFT_PUNK.artist} - {DAFT_PUNK.title}"


def _cancelled_events(logs: list[dict]) -> list[dict]:
    return [event for event in logs if event.get("event_name") == "job.cancelled"]


# -- the record ----------------------------------------------------------------------------------


def test_a_cancelled_record_is_final_and_no_update_writes_to_it(redis_client: redis.Redis) -> None:
    # Given a job that was deferred, then cancelled with a note
    store = JobStore(redis_client, ttl=3600)
    job = store.create("download")
    store.update(job.id, state=JobState.DEFERRED, service="slskd-api", last_error="OPEN")
    cancelled = store.update(job.id, state=JobState.CANCELLED, note="cancelled by an operator")

    # When a step, a deferral and a failure try to write to it
    later = [
        store.update(job.id, state=JobState.SEARCHING, count_attempt=True),
        store.update(job.id, state=JobState.DEFERRED, last_error="still OPEN"),
        store.update(job.id, state=JobState.FAILED, note="gave up"),
    ]

    # Then the cancel finished it, and every later update was told so and wrote nothing
    assert cancelled is Update.FINISHED
    assert later == [Update.CANCELLED] * 3
    record = store.get(job.id)
    assert record.state is JobState.CANCELLED and record.attempts == 0
    assert record.last_error == "OPEN"
    assert record.history[-1]["state"] == "cancelled"
    assert record.history[-1]["note"] == "cancelled by an operator"
    assert JobState.CANCELLED in FINAL_STATES
    # And like any finished record, it expires and leaves the unfinished jobs
    assert 3_500_000 < redis_client.pttl(store.key(job.id)) <= 3_600_000
    assert store.unfinished_ids() == []
    # And reopening it (a requeued dead letter of its steps) does not take it back
    assert store.reopen(job.id, "requeued") is False


def test_an_update_unless_final_leaves_a_finished_record_alone(redis_client: redis.Redis) -> None:
    # Given a done job
    store = JobStore(redis_client)
    job = store.create("download")
    store.update(job.id, state=JobState.DONE)
    before = store.get(job.id)

    # When it is updated only if it is not finished, Then nothing is written
    assert store.update(job.id, state=JobState.CANCELLED, unless_final=True) is Update.FINAL
    assert store.get(job.id) == before
    assert store.update("nope", state=JobState.CANCELLED) is Update.NO_RECORD


def test_cancel_job_refuses_an_unknown_or_finished_job(redis_url: str, fakes: Fakes) -> None:
    app = SoulspotJobs(settings_for(redis_url, fakes))
    try:
        done = app.store.create("download")
        app.store.update(done.id, state=JobState.DONE)
        with pytest.raises(JobNotFound, match="no job 'nope'") as missing:
            app.cancel_job("nope")
        assert isinstance(missing.value, LookupError)
        with pytest.raises(JobAlreadyFinal, match=f"job {done.id} is already done") as final:
            app.cancel_job(done.id)
        assert final.value.state == "done"
        cancelled = app.cancel_job(app.store.create("download").id, by="the test")
        assert cancelled.state is JobState.CANCELLED
        assert cancelled.history[-1]["note"] == "cancelled by the test"
        with pytest.raises(JobAlreadyFinal, match="is already cancelled"):
            app.cancel_job(cancelled.id)
    finally:
        app.close()


# -- its messages --------------------------------------------------------------------------------


def test_a_queued_job_cancelled_before_it_runs_calls_no_upstream_and_counts_nothing(
    redis_url: str, fakes: Fakes
) -> None:
    # Given a download job enqueued while no worker runs, then cancelled
    app = SoulspotJobs(settings_for(redis_url, fakes))
    job_id = app.enqueue_download(_query())
    app.cancel_job(job_id)
    breaker = app.breakers["slskd-api"]

    # When a worker picks its message up
    with structlog.testing.capture_logs() as logs, running(app):
        wait_until(lambda: _cancelled_events(logs), "the message to be skipped", PICKUP_DEADLINE)
        time.sleep(0.3)  # nothing more happens

        # Then slskd was never asked, and the breaker counted neither a success nor a failure
        assert fakes.slskd.requests == []
        stats = breaker.stats
        assert (stats.total_successes, stats.total_failures) == (0, 0)
        # And the message is gone: acknowledged, not retried, not dead-lettered
        assert app.dead_letters().list() == []
        assert app.broker.client.hlen(f"{app.keys.dramatiq}:jobs.new.msgs") == 0

    # And the job stays cancelled, with its attempt not counted, logged once
    job = app.job(job_id)
    assert job.state is JobState.CANCELLED and job.attempts == 0
    [event] = _cancelled_events(logs)
    assert (event["job_id"], event["actor"]) == (job_id, "search_track")


def test_a_deferred_job_cancelled_leaves_the_index_and_its_message_ends_when_refused_again(
    redis_url: str, fakes: Fakes
) -> None:
    # Given slskd forced OPEN briefly and a download job whose search was deferred
    app = SoulspotJobs(settings_for(redis_url, fakes))
    breaker = app.breakers["slskd-api"]
    breaker.force_open_sync(3.0)
    with structlog.testing.capture_logs() as logs, running(app):
        job_id = app.enqueue_download(_query())
        wait_until(lambda: app.job(job_id).state is JobState.DEFERRED, "the job to be deferred")
        app.deferred.flush()
        [listed] = app.deferred.jobs("slskd-api")
        assert app.job(job_id).deferred_message_id == listed.message_id

        # When it is cancelled, and the breaker is held OPEN past the message's return
        app.cancel_job(job_id)
        breaker.force_open_sync(600)

        # Then it is off the deferred index at once
        assert app.deferred.jobs("slskd-api") == []
        # And when its message comes back it is refused, then skipped: not deferred again
        wait_until(lambda: _cancelled_events(logs), "the message to be skipped", PICKUP_DEADLINE)
        time.sleep(0.3)
        assert app.deferred.jobs("slskd-api") == []
        assert app.deferred.deferral_totals() == {"slskd-api": 1}
        assert app.dead_letters().list() == []
        assert fakes.slskd.requests == []
    [event] = _cancelled_events(logs)
    assert event["job_id"] == job_id
    assert app.job(job_id).state is JobState.CANCELLED


def test_a_deferred_message_of_a_cancelled_job_admitted_later_ends_at_its_step(
    redis_url: str, fakes: Fakes
) -> None:
    # Given a cancelled job whose step comes back deferred, its breaker CLOSED by then
    app = SoulspotJobs(settings_for(redis_url, fakes))
    job_id = app.enqueue_download(_query())
    app.cancel_job(job_id)
    message = app.actor("search_track").message(job_id).copy(options={DEFERRED_BY: "slskd-api"})

    # When a worker runs it
    with structlog.testing.capture_logs() as logs, running(app):
        app.broker.enqueue(message)
        wait_until(lambda: len(_cancelled_events(logs)) == 2, "both messages skipped")

        # Then neither ran: slskd was never asked
        assert fakes.slskd.requests == []
    assert app.job(job_id).state is JobState.CANCELLED


def test_the_orphan_check_leaves_a_cancelled_job_alone(redis_url: str, fakes: Fakes) -> None:
    # Given a cancelled job with no message anywhere, idle for longer than orphan_after
    settings = settings_for(redis_url, fakes)
    settings.recovery = RecoverySettings(orphan_after=0.1, orphan_check_interval=0.1)
    app = SoulspotJobs(settings)
    job = app.store.create("download", query=_query())
    app.cancel_job(job.id)
    time.sleep(0.3)

    # When the orphan check looks several times
    [check] = [m for m in app.broker.middleware if isinstance(m, OrphanCheck)]
    with structlog.testing.capture_logs() as logs, running(app):
        wait_until(lambda: check._thread is not None, "the orphan check to start")
        time.sleep(1.0)

    # Then it neither requeued nor failed it: a cancelled job is finished
    assert not [event for event in logs if event.get("event_name") == "job.orphaned"]
    assert app.job(job.id).state is JobState.CANCELLED
    assert fakes.slskd.requests == []
