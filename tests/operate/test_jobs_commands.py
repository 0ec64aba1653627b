"""``jobs [--state S] [--limit N]``, ``jobs show ID`` with the job's history, ``jobs cancel
ID``, and the line every command prints about the Redis it uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from soulspot_jobs.embedded import SharedRedis
from soulspot_jobs.jobs.records import JobState, JobStore

from .conftest import Cli, run_process


def make_jobs(store: JobStore) -> dict[str, str]:
    """Three jobs: one done after a deferral, one failed, one still queued (newest)."""
    done = store.create("download", query="Daft Punk - Da Funk").id
    store.update(done, state=JobState.SEARCHING, service="slskd-api")
    store.update(done, state=JobState.DEFERRED, service="slskd-api", last_error="slskd-api is OPEN")
    store.update(done, state=JobState.SEARCHING, service="slskd-api")
    store.update(done, state=JobState.DONE)
    failed = store.create("enrichment", isrc="XX0000000000").id
    store.update(failed, state=JobState.FAILED, last_error="no recording")
    queued = store.create("playlist", playlist_id="37i9dQZF1DXcBWIGoYBM5M").id
    return {"done": done, "failed": failed, "queued": queued}


def test_jobs_lists_the_most_recent_jobs_newest_first(cli: Cli, redis_client: redis.Redis) -> None:
    # Given three jobs
    ids = make_jobs(JobStore(redis_client))

    # When they are listed, as JSON and as text
    listed = cli("jobs", "--json").json()
    text = cli("jobs").stdout.splitlines()

    # Then all three are there, newest first, with their states
    assert [job["id"] for job in listed] == [ids["queued"], ids["failed"], ids["done"]]
    assert [job["state"] for job in listed] == ["queued", "failed", "done"]
    assert text[0].split() == ["id", "kind", "state", "service", "attempts", "updated", "what"]
    assert text[3].split()[:3] == [ids["done"], "download", "done"]
    assert text[3].endswith("Daft Punk - Da Funk")


def test_jobs_filters_by_state_and_limits_the_count(cli: Cli, redis_client: redis.Redis) -> None:
    # Given three jobs
    ids = make_jobs(JobStore(redis_client))

    # When the failed ones, and then only the newest one, are listed
    failed = cli("jobs", "--state", "failed", "--json").json()
    newest = cli("jobs", "--limit", "1", "--json").json()

    # Then each shows just those
    assert [job["id"] for job in failed] == [ids["failed"]]
    assert [job["id"] for job in newest] == [ids["queued"]]


def test_jobs_with_an_unknown_state_is_one_line_and_exit_2(cli: Cli) -> None:
    result = cli("jobs", "--state", "finished")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown --state 'finished': use one of queued")


def test_jobs_show_prints_the_whole_history_not_just_the_last_state(
    cli: Cli, redis_client: redis.Redis
) -> None:
    # Given a job that was deferred once on its way to done
    ids = make_jobs(JobStore(redis_client))

    # When it is shown, as JSON and as text
    shown = cli("jobs", "show", ids["done"], "--json").json()
    text = cli("jobs", "show", ids["done"]).stdout

    # Then the JSON has the record and every step of its history
    assert shown["state"] == "done"
    assert [(e["state"], e["note"]) for e in shown["history"]] == [
        ("queued", "created"),
        ("searching", None),
        ("deferred", "slskd-api is OPEN"),
        ("searching", None),
        ("done", None),
    ]
    # And the text shows the same history, one line per change
    history = text.split("history:\n", 1)[1].splitlines()
    assert history[0].split() == ["at", "state", "service", "note"]
    assert [line.split()[1] for line in history[1:]] == [
        "queued",
        "searching",
        "deferred",
        "searching",
        "done",
    ]
    assert history[3].endswith("slskd-api is OPEN")


@pytest.mark.parametrize("verb", ["show", "cancel"])
def test_jobs_show_or_cancel_of_an_unknown_id_is_one_line_and_exit_1(
    cli: Cli, redis_url: str, verb: str
) -> None:
    result = cli("jobs", verb, "nope")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"using Redis at {redis_url}", "error: no job 'nope'"]


def test_jobs_show_labels_a_deferral_reason_as_such_and_an_error_as_an_error(
    cli: Cli, redis_client: redis.Redis
) -> None:
    # Given a job deferred now, the three jobs of make_jobs (one done after a deferral)
    store = JobStore(redis_client)
    ids = make_jobs(store)
    waiting = store.create("download", query="A - B").id
    store.update(waiting, state=JobState.DEFERRED, service="slskd-api", last_error="OPEN")

    # When each is shown
    def label_of(job_id: str) -> list[str]:
        record = cli("jobs", "show", job_id).stdout.split("history:", 1)[0].splitlines()
        return [line for line in record if line.endswith(("OPEN", "recording"))]

    # Then a deferral's reason is never called an error; a real error is
    assert label_of(waiting) == ["deferred because  OPEN"]
    assert label_of(ids["done"]) == ["was deferred because  slskd-api is OPEN"]
    assert label_of(ids["failed"]) == ["last error  no recording"]


def test_jobs_cancel_cancels_an_unfinished_job_and_refuses_a_finished_one(
    cli: Cli, redis_client: redis.Redis
) -> None:
    # Given a queued job and a done one
    ids = make_jobs(JobStore(redis_client))

    # When the queued one is cancelled
    result = cli("jobs", "cancel", ids["queued"])

    # Then one line says so, and the record shows it cancelled, by whom in its history
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"job {ids['queued']} cancelled\n"
    shown = cli("jobs", "show", ids["queued"], "--json").json()
    assert shown["state"] == "cancelled"
    assert shown["history"][-1]["note"] == "cancelled by an operator"
    assert [job["id"] for job in cli("jobs", "--state", "cancelled", "--json").json()] == [
        ids["queued"]
    ]

    # When a finished job, or the cancelled one, is cancelled, Then exit 1 naming its state
    for job_id, state in ((ids["done"], "done"), (ids["queued"], "cancelled")):
        refused = cli("jobs", "cancel", job_id)
        assert refused.exit_code == 1
        assert refused.stderr.splitlines()[-1] == f"error: job {job_id} is already {state}"


def test_a_command_run_in_an_empty_directory_says_it_created_its_embedded_redis(
    tmp_path: Path,
) -> None:
    # Given an empty directory, no REDIS_URL and no SOULSPOT_DATA_DIR
    data_dir = tmp_path / ".soulspot"
    try:
        # When `jobs` runs there twice
        first = run_process("jobs", "--json", cwd=tmp_path, env={"SOULSPOT_DATA_DIR": ""})
        second = run_process("jobs", "--json", cwd=tmp_path, env={"SOULSPOT_DATA_DIR": ""})
    finally:
        SharedRedis(data_dir).stop()

    # Then the first says on stderr which Redis it used, and that it was created just now;
    # the second only which one; stdout stays the JSON
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert first.stderr.splitlines() == [
        f"using embedded Redis in {data_dir} (created just now: no jobs from other directories "
        "are here; set SOULSPOT_DATA_DIR or REDIS_URL to share one)"
    ]
    assert second.stderr.splitlines() == [f"using embedded Redis in {data_dir}"]
    assert json.loads(first.stdout) == json.loads(second.stdout) == []
