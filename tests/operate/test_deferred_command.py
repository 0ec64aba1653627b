"""``deferred [--service NAME]``: messages a real Worker deferred while a breaker was OPEN, each
with its job (when it is a job's step) and why."""

from __future__ import annotations

import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.settings import load_settings
from tests.polling import wait_until

from .conftest import Cli


def test_deferred_lists_each_message_held_back_and_counts_per_service(
    cli: Cli, make_worker
) -> None:
    # Given slskd and MusicBrainz forced OPEN by the operator
    cli("open", "slskd", "--for", "300")
    cli("open", "musicbrainz", "--for", "120")

    def declare(broker: RedisBroker) -> None:
        @dramatiq.actor(broker=broker, service="slskd-api", queue_name="jobs")
        def fetch(n: int) -> None: ...

        @dramatiq.actor(broker=broker, service="musicbrainz-api", queue_name="jobs")
        def lookup(n: int) -> None: ...

    # When a real worker receives two slskd messages and one MusicBrainz message
    jobs = make_worker(declare)
    sent_at = time.time() * 1000
    fetches = [jobs.broker.get_actor("fetch").send(n).message_id for n in (1, 2)]
    lookup = jobs.broker.get_actor("lookup").send(3).message_id
    expected = {"slskd-api": 2, "musicbrainz-api": 1}
    wait_until(lambda: jobs.deferred.counts() == expected, "three deferrals indexed")

    # Then `deferred --json` lists each with actor, service, one deferral and when it runs again
    listed = cli("deferred", "--json").json()
    assert listed["counts"] == expected
    by_id = {job["message_id"]: job for job in listed["jobs"]}
    assert set(by_id) == {*fetches, lookup}
    first = by_id[fetches[0]]
    assert (first["actor"], first["service"], first["deferrals"]) == ("fetch", "slskd-api", 1)
    assert sent_at <= first["first_deferred_at"] <= time.time() * 1000
    assert 290 <= first["runs_again_in"] <= 305 + 5
    assert 110 <= by_id[lookup]["runs_again_in"] <= 120 + 5
    # And --service shows one service's only, in text too
    only = cli("deferred", "--service", "slskd", "--json").json()
    assert {job["message_id"] for job in only["jobs"]} == set(fetches)
    assert only["counts"] == {"slskd-api": 2}
    text = cli("deferred", "--service", "musicbrainz").stdout.splitlines()
    assert text[0].split() == [
        "message_id",
        "job",
        "actor",
        "service",
        "deferrals",
        "first_deferred",
        "runs_again_in",
        "reason",
    ]
    # And a message that is no job's step shows "-" as its job, and why it was deferred
    assert text[1].split()[:5] == [lookup, "-", "lookup", "musicbrainz-api", "1"]
    assert text[1].endswith(by_id[lookup]["reason"])
    assert by_id[lookup]["reason"].startswith("Circuit breaker musicbrainz-api is OPEN")
    assert text[-1] == "deferred per service: musicbrainz-api: 1"


def test_deferred_shows_the_job_of_each_deferred_job_step_and_why(cli: Cli, redis_url: str) -> None:
    # Given the jobs app with a worker, slskd forced OPEN, and a download job enqueued
    cli("open", "slskd", "--for", "300")
    app = SoulspotJobs(load_settings(REDIS_URL=redis_url))
    worker = dramatiq.Worker(app.broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        job_id = app.enqueue_download("Daft Punk - Da Funk")
        wait_until(lambda: app.job(job_id).state is JobState.DEFERRED, "the job to be deferred")
        app.deferred.flush()

        # When the deferred messages are listed, as text and as JSON
        text = cli("deferred").stdout.splitlines()
        [entry] = cli("deferred", "--json").json()["jobs"]
    finally:
        worker.stop()
        app.close()

    # Then its search step is listed with its job id and the breaker's reason
    row = text[1].split()
    assert row[1:4] == [job_id, "search_track", "slskd-api"]
    assert "Circuit breaker slskd-api is OPEN, blocking request." in text[1]
    assert (entry["job_id"], entry["actor"]) == (job_id, "search_track")
    assert entry["reason"].startswith("Circuit breaker slskd-api is OPEN")


def test_deferred_with_an_unknown_service_is_one_line_and_exit_2(cli: Cli) -> None:
    result = cli("deferred", "--service", "lastfm")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown service 'lastfm'")
