"""``jobs [--state S] [--limit N]`` and ``jobs show ID`` with the job's history."""

from __future__ import annotations

import redis

from soulspot_jobs.jobs.records import JobState, JobStore

from .conftest import Cli


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


def test_jobs_show_of_an_unknown_id_is_one_line_and_exit_1(cli: Cli) -> None:
    result = cli("jobs", "show", "nope")
    assert result.exit_code == 1
    assert result.stderr == "error: no job 'nope'\n"
