"""``soulspot-jobs enqueue``: a job record and its first message, and the job id printed."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import dramatiq
import redis

from soulspot_jobs.embedded import SharedRedis
from soulspot_jobs.jobs.queues import NEW_JOBS_QUEUE
from soulspot_jobs.jobs.records import JobStore

from .conftest import Cli, run_process

#: Namespace of the broker's keys with the default key prefix.
NAMESPACE = "soulspot:dramatiq"


def queued_actors(client: redis.Redis, queue: str = NEW_JOBS_QUEUE) -> list[str]:
    """Actor names of the messages waiting on ``queue`` (by default that of new jobs)."""
    raw = client.hvals(f"{NAMESPACE}:{queue}.msgs")
    return [dramatiq.Message.decode(data).actor_name for data in raw]


def test_enqueue_download_prints_the_id_of_a_queued_job_with_its_message_sent(
    cli: Cli, redis_client: redis.Redis
) -> None:
    # When a download is enqueued from the command line
    result = cli("enqueue", "download", "Daft Punk - Around the World")

    # Then it prints one line, the id of a queued download job for that query
    assert result.exit_code == 0, result.stderr
    job_id = result.stdout.strip()
    job = JobStore(redis_client).get(job_id)
    assert job is not None and job.kind == "download" and job.state.value == "queued"
    assert job.details["artist"] == "Daft Punk"
    assert job.details["title"] == "Around the World"
    # And its first message waits on the queue for a worker
    assert queued_actors(redis_client) == ["search_track"]


def test_enqueue_json_prints_the_job_id_as_json(cli: Cli, redis_client: redis.Redis) -> None:
    # When a playlist import and an enrichment are enqueued with --json
    playlist = cli("enqueue", "playlist", "37i9dQZF1DXcBWIGoYBM5M", "--json").json()
    enrich = cli("enqueue", "enrich", "--isrc", "GBDUW0000059", "--json").json()

    # Then each prints {"job_id": ...} naming its job record
    store = JobStore(redis_client)
    assert store.get(playlist["job_id"]).details["playlist_id"] == "37i9dQZF1DXcBWIGoYBM5M"
    assert store.get(enrich["job_id"]).details["isrc"] == "GBDUW0000059"
    assert sorted(queued_actors(redis_client)) == ["enrich_metadata", "import_playlist"]


def test_enqueue_enrich_by_artist_and_title(cli: Cli, redis_client: redis.Redis) -> None:
    # When an enrichment is enqueued by artist and title
    job_id = cli("enqueue", "enrich", "--artist", "Daft Punk", "--title", "Da Funk").stdout

    # Then the job record carries both
    details = JobStore(redis_client).get(job_id.strip()).details
    assert (details["artist"], details["title"]) == ("Daft Punk", "Da Funk")


def test_enqueue_enrich_without_what_to_look_up_is_one_line_and_exit_2(
    cli: Cli, redis_client: redis.Redis
) -> None:
    # When an enrichment names neither an id nor an artist and title
    result = cli("enqueue", "enrich", "--artist", "Daft Punk")

    # Then one error line, exit 2, and no job was recorded
    assert result.exit_code == 2
    assert result.stderr == (
        "error: enqueue enrich needs --mbid, --isrc, or both --artist and --title\n"
    )
    assert JobStore(redis_client).jobs() == []


def test_without_redis_url_commands_share_the_embedded_redis_of_the_data_directory(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / ".soulspot"
    try:
        # When a download is enqueued by a process with REDIS_URL unset (the embedded Redis of
        # ./.soulspot/ starts for it and stops when it exits)
        enqueued = run_process("enqueue", "download", "A - B", cwd=tmp_path)
        assert enqueued.returncode == 0, enqueued.stderr
        job_id = enqueued.stdout.strip()

        # Then a later process finds the job there, still queued (the append-only file kept it)
        shown = run_process("jobs", "show", job_id, "--json", cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["state"] == "queued"
        assert (data_dir / "redis" / "appendonly.aof").is_file()
    finally:
        SharedRedis(data_dir).stop()


def test_an_unreachable_redis_is_one_line_and_exit_1_within_seconds(tmp_path: Path) -> None:
    # Given a loopback port nothing listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    # When status runs against it
    started = time.monotonic()
    result = run_process("status", env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"}, cwd=tmp_path)

    # Then it fails within seconds, in one line naming the server
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"127.0.0.1:{port}" in result.stderr


def test_a_bad_setting_is_one_line_and_exit_2(tmp_path: Path, redis_url: str) -> None:
    # When a command runs with an invalid setting
    env = {"REDIS_URL": redis_url, "CIRCUIT_BREAKER_FAILURE_THRESHOLD": "abc"}
    result = run_process("status", env=env, cwd=tmp_path)

    # Then it names the variable in one line and exits 2
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "CIRCUIT_BREAKER_FAILURE_THRESHOLD" in result.stderr
