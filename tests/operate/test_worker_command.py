"""``soulspot-jobs worker``: Dramatiq's worker processes on the embedded Redis, stopped cleanly by
SIGTERM or Ctrl-C, and restarted by ``--watch`` when a ``.py`` file changes."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import redis
from watchdog.events import (
    DirModifiedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from soulspot_jobs.embedded import SharedRedis
from soulspot_jobs.embedded.processes import is_alive, wait_for_exit
from soulspot_jobs.embedded.server import EmbeddedRedis
from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.fakes.slskd import FakeSlskd
from soulspot_jobs.fakes.spotify import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakeSpotify
from soulspot_jobs.operate.source_watch import is_source_change
from tests.polling import wait_until
from tests.processes import SOULSPOT_JOBS, Spawned, environment

#: What Dramatiq logs when a worker process has started consuming.
READY = "Worker process is ready for action."
#: Seconds a worker may take to start (the machine is shared) and to stop.
START_DEADLINE = 60.0
STOP_DEADLINE = 30.0


def _worker(tmp_path: Path, data_dir: Path, *options: str) -> Spawned:
    command = [SOULSPOT_JOBS, "worker", "--processes", "1", "--threads", "1", *options]
    return Spawned(command, env=environment(data_dir, LOG_FORMAT="json"), cwd=tmp_path)


def _dramatiq_pids(worker: Spawned) -> list[int]:
    """Pids of the Dramatiq main processes the command started, in order (its log says)."""
    events = [json.loads(line) for line in worker.lines('"worker.started"')]
    return [event["pid"] for event in events]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_worker_stops_cleanly_on_sigterm_or_sigint_and_so_does_the_embedded_redis(
    tmp_path: Path, data_dir: Path, signum: signal.Signals
) -> None:
    # Given the worker command running on the embedded Redis (no REDIS_URL)
    worker = _worker(tmp_path, data_dir)
    try:
        worker.wait_for(READY, timeout=START_DEADLINE)
        [dramatiq] = _dramatiq_pids(worker)
        status = SharedRedis(data_dir).status()
        assert status.running and worker.pid in status.users and status.pid is not None

        # When it receives the signal
        code = worker.stop(signum, STOP_DEADLINE)

        # Then it exits 0 after Dramatiq stopped its workers, and the server it used stops
        assert code == 0, "".join(worker.stderr[-20:])
        assert worker.lines("Worker has been shut down.")
        assert not is_alive(dramatiq)
        assert wait_for_exit(status.pid, STOP_DEADLINE)
        assert "Traceback" not in "".join(worker.stderr)
        # And every line it printed, Dramatiq's own process's included, is one of our records
        printed = [line for line in worker.stderr if line.strip()]
        assert printed and all(line.startswith("{") for line in printed), printed[:5]
    finally:
        worker.kill_group()


def test_two_worker_commands_started_at_once_share_one_embedded_redis(
    tmp_path: Path, data_dir: Path
) -> None:
    # Given two worker commands started at the same moment in two terminals, no REDIS_URL
    workers = [_worker(tmp_path, data_dir), _worker(tmp_path, data_dir)]
    try:
        for worker in workers:
            worker.wait_for(READY, timeout=START_DEADLINE)

        # Then both use the same server: one socket, one process, started once
        urls = {json.loads(w.lines('"worker.started"')[0])["redis"] for w in workers}
        assert urls == {f"unix://{data_dir / 'redis.sock'}"}
        status = SharedRedis(data_dir).status()
        assert {w.pid for w in workers} <= set(status.users)
        assert (data_dir / "redis.log").read_text().count(" ready on ") == 1

        # When the first one stops, the server stays for the second
        assert workers[0].stop(signal.SIGTERM, STOP_DEADLINE) == 0
        assert SharedRedis(data_dir).status().pid == status.pid

        # When the second one stops, the server stops too
        assert workers[1].stop(signal.SIGTERM, STOP_DEADLINE) == 0
        assert status.pid is not None and wait_for_exit(status.pid, STOP_DEADLINE)
    finally:
        for worker in workers:
            worker.kill_group()


def test_the_dramatiq_command_alone_runs_on_the_embedded_redis(
    tmp_path: Path, data_dir: Path
) -> None:
    # Given `dramatiq soulspot_jobs.worker` started without REDIS_URL
    command = [sys.executable, "-m", "dramatiq", "soulspot_jobs.worker", "-p", "1", "-t", "1"]
    dramatiq = Spawned(command, env=environment(data_dir, LOG_FORMAT="json"), cwd=tmp_path)
    try:
        # When its worker process is ready
        dramatiq.wait_for(READY, timeout=START_DEADLINE)

        # Then that process uses the embedded server of the data directory
        status = SharedRedis(data_dir).status()
        assert status.running and status.pid is not None
        assert len(status.users) == 1 and status.users[0] != dramatiq.pid

        # And once Dramatiq has stopped, the server stops too (its last user is gone)
        assert dramatiq.stop(signal.SIGTERM, STOP_DEADLINE) == 0
        assert wait_for_exit(status.pid, STOP_DEADLINE)
    finally:
        dramatiq.kill_group()


def test_worker_watch_restarts_the_workers_when_a_py_file_changes(
    tmp_path: Path, data_dir: Path
) -> None:
    # Given the worker command watching a source directory
    sources = tmp_path / "src"
    sources.mkdir()
    module = sources / "module.py"
    module.write_text("VALUE = 1\n")
    worker = _worker(tmp_path, data_dir, "--watch-dir", str(sources))
    try:
        worker.wait_for(READY, timeout=START_DEADLINE)
        [first] = _dramatiq_pids(worker)

        # When a .py file in it changes
        module.write_text("VALUE = 2\n")

        # Then Dramatiq is stopped, started again, and its new worker process comes up
        worker.wait_for('"worker.reloading"')

        def ready_after_the_restart() -> bool:
            lines = list(worker.stderr)
            starts = [i for i, line in enumerate(lines) if '"worker.started"' in line]
            return len(starts) > 1 and any(READY in line for line in lines[starts[1] :])

        wait_until(ready_after_the_restart, "a ready worker after the restart", START_DEADLINE)
        first_again, second = _dramatiq_pids(worker)
        assert first_again == first != second
        assert not is_alive(first)
        assert is_alive(second)

        # And it still stops cleanly
        assert worker.stop(signal.SIGTERM, STOP_DEADLINE) == 0
    finally:
        worker.kill_group()


@pytest.mark.parametrize(
    ("event", "reloads"),
    [
        (FileModifiedEvent("/src/jobs.py"), True),
        (FileCreatedEvent("/src/new.py"), True),
        (FileMovedEvent("/src/.jobs.py.swp", "/src/jobs.py"), True),
        (FileModifiedEvent("/src/notes.txt"), False),
        (FileOpenedEvent("/src/jobs.py"), False),
        (FileClosedNoWriteEvent("/src/jobs.py"), False),
        (DirModifiedEvent("/src/pkg.py"), False),
        (FileModifiedEvent("/src/__pycache__/jobs.py"), False),
    ],
)
def test_only_changes_to_py_files_reload(event: object, reloads: bool) -> None:
    # Given an absolute path (as watchdog reports it for an absolute --watch-dir)
    # Then the suffix decides
    assert is_source_change(event) is reloads  # type: ignore[arg-type]


def test_the_worker_refuses_to_send_the_real_musicbrainz_a_user_agent_without_a_contact(
    tmp_path: Path, data_dir: Path
) -> None:
    """MusicBrainz asks every client for a User-Agent with a way to reach its operator, and
    blocks those without (musicbrainz.org/doc/MusicBrainz_API/Rate_Limiting)."""
    # Given the real MusicBrainz and the default contact
    env = environment(data_dir, MUSICBRAINZ_URL="https://musicbrainz.org")
    env.pop("MUSICBRAINZ_CONTACT", None)

    # When the worker command starts
    worker = Spawned([SOULSPOT_JOBS, "worker", "-p", "1", "-t", "1"], env=env, cwd=tmp_path)
    try:
        code = worker.wait(START_DEADLINE)
    finally:
        worker.kill_group()

    # Then it exits 2 with one line naming the setting, before any worker started
    assert code == 2
    printed = [line for line in worker.stderr if line.strip()]
    assert len(printed) == 1, printed
    assert printed[0].startswith("error: invalid setting MUSICBRAINZ_CONTACT='soulspot-jobs@")
    assert "set MUSICBRAINZ_CONTACT" in printed[0]


def test_the_worker_checks_each_services_credentials_at_start_one_line_per_service(
    tmp_path: Path, data_dir: Path, redis_url: str
) -> None:
    """slskd answers 401, empty, to a request without a valid ``X-API-Key`` (slskd's
    ``ApiKeyAuthenticationHandler``); Spotify's accounts service gives the right client
    credentials a token (Spotify's Authorization guide, client-credentials flow)."""
    # Given the fake slskd expecting another key than the worker's, the fake Spotify and
    # MusicBrainz as configured
    with (
        FakeSlskd(api_key="the-right-key") as slskd,
        FakeSpotify() as spotify,
        FakeMusicBrainz() as musicbrainz,
    ):
        env = environment(
            data_dir,
            REDIS_URL=redis_url,
            LOG_FORMAT="json",
            SLSKD_URL=slskd.url,
            SLSKD_API_KEY="a-wrong-key",
            SPOTIFY_API_URL=spotify.url,
            SPOTIFY_ACCOUNTS_URL=spotify.url,
            SPOTIFY_CLIENT_ID=DEFAULT_CLIENT_ID,
            SPOTIFY_CLIENT_SECRET=DEFAULT_CLIENT_SECRET,
            MUSICBRAINZ_URL=musicbrainz.url,
        )

        # When the worker command starts
        worker = Spawned([SOULSPOT_JOBS, "worker", "-p", "1", "-t", "1"], env=env, cwd=tmp_path)
        try:
            worker.wait_for('"credentials.', count=3, timeout=START_DEADLINE)
            worker.wait_for(READY, timeout=START_DEADLINE)
            assert worker.stop(signal.SIGTERM, STOP_DEADLINE) == 0
        finally:
            worker.kill_group()

    # Then it logged one line per service: slskd's refused, naming the setting to fix
    checks = [json.loads(line) for line in worker.lines('"credentials.')]
    by_service = {check["service"]: check for check in checks}
    assert len(checks) == len(by_service) == 3, checks
    slskd_line = by_service["slskd-api"]
    assert slskd_line["event"] == "credentials.refused"
    assert slskd_line["reason"] == "unauthorized (check SLSKD_API_KEY)"
    assert "SLSKD_API_KEY" in slskd_line["message"]
    assert "a-wrong-key" not in "".join(worker.stderr)
    assert by_service["spotify-api"]["event"] == "credentials.accepted"
    assert by_service["musicbrainz-api"]["event"] == "credentials.accepted"
    assert "Traceback" not in "".join(worker.stderr)


@pytest.mark.parametrize(
    ("name", "command", "status"),
    [
        ("soulspot-jobs worker", [SOULSPOT_JOBS, "worker", "-p", "1", "-t", "1"], 1),
        (
            "dramatiq soulspot_jobs.worker",
            [sys.executable, "-m", "dramatiq", "soulspot_jobs.worker", "-p", "1", "-t", "1"],
            3,
        ),
    ],
    ids=["soulspot-jobs worker", "dramatiq soulspot_jobs.worker"],
)
def test_an_unreachable_redis_ends_each_worker_command_with_the_status_the_docs_give(
    tmp_path: Path,
    data_dir: Path,
    closed_port: int,
    name: str,
    command: list[str],
    status: int,
) -> None:
    # Given a REDIS_URL where no Redis listens
    # And no wait for it at start
    env = environment(
        data_dir, REDIS_URL=f"redis://127.0.0.1:{closed_port}/0", SOULSPOT_STARTUP_WAIT="0"
    )

    # When the worker command starts
    worker = Spawned(command, env=env, cwd=tmp_path)
    try:
        code = worker.wait(START_DEADLINE)
    finally:
        worker.kill_group()

    # Then it exits with its own status, one error line naming the server, no traceback
    assert code == status, "".join(worker.stderr[-20:])
    errors = [line for line in worker.stderr if line.startswith("error: ")]
    assert len(errors) == 1 and f"127.0.0.1:{closed_port}" in errors[0], errors
    assert "Traceback" not in "".join(worker.stderr)
    # And the exit-status table of docs/operating.md names this command on that status's row,
    # and on no other
    documented = _exit_status_rows()
    assert f"`{name}`" in documented[status], documented
    assert [code for code, row in documented.items() if f"`{name}`" in row] == [status]


@pytest.mark.faults
@pytest.mark.parametrize(
    "command",
    [
        [SOULSPOT_JOBS, "worker", "-p", "1", "-t", "1"],
        [sys.executable, "-m", "dramatiq", "soulspot_jobs.worker", "-p", "1", "-t", "1"],
    ],
    ids=["soulspot-jobs worker", "dramatiq soulspot_jobs.worker"],
)
def test_a_worker_started_before_its_redis_waits_for_it_and_then_works(
    tmp_path: Path, data_dir: Path, closed_port: int, command: list[str]
) -> None:
    # Given a REDIS_URL whose server is not running yet, and the default start-up wait
    env = environment(data_dir, REDIS_URL=f"redis://127.0.0.1:{closed_port}/0")

    # When the worker command starts
    worker = Spawned(command, env=env, cwd=tmp_path)
    try:
        # Then it says what it waits for, and again a few seconds later, and stays up
        worker.wait_for("worker.waiting", count=2, timeout=START_DEADLINE)
        assert any(f"127.0.0.1:{closed_port}" in line for line in worker.lines("worker.waiting"))
        # And when Redis comes, the worker starts and heartbeats on it
        with (
            EmbeddedRedis(port=closed_port) as server,
            redis.Redis.from_url(server.url) as client,
        ):
            wait_until(
                lambda: client.zcard("soulspot:dramatiq:__heartbeats__") > 0,
                "the worker's first heartbeat",
                START_DEADLINE,
            )
            assert worker.stop() == 0
    finally:
        worker.kill_group()


def test_a_worker_gives_up_waiting_for_its_redis_after_soulspot_startup_wait(
    tmp_path: Path, data_dir: Path, closed_port: int
) -> None:
    # Given a REDIS_URL where no Redis listens, and a start-up wait of 2 s
    env = environment(
        data_dir, REDIS_URL=f"redis://127.0.0.1:{closed_port}/0", SOULSPOT_STARTUP_WAIT="2"
    )

    # When the worker command starts, it waits, then exits with the unreachable-Redis status
    worker = Spawned([SOULSPOT_JOBS, "worker", "-p", "1"], env=env, cwd=tmp_path)
    try:
        assert worker.wait(START_DEADLINE) == 1
    finally:
        worker.kill_group()
    assert worker.lines("worker.waiting")
    assert [line for line in worker.stderr if line.startswith("error: ")]


def test_a_worker_waits_for_its_rabbitmq_too_for_as_long_as_soulspot_startup_wait(
    tmp_path: Path, data_dir: Path, closed_port: int
) -> None:
    # Given a BROKER_URL where no RabbitMQ listens, its Redis up, and a start-up wait of 2 s
    with EmbeddedRedis() as server:
        env = environment(
            data_dir,
            REDIS_URL=server.url,
            BROKER_URL=f"amqp://guest:guest@127.0.0.1:{closed_port}/%2F",
            SOULSPOT_STARTUP_WAIT="2",
        )

        # When Dramatiq's worker command starts
        command = [sys.executable, "-m", "dramatiq", "soulspot_jobs.worker", "-p", "1", "-t", "1"]
        worker = Spawned(command, env=env, cwd=tmp_path)
        try:
            code = worker.wait(START_DEADLINE)
        finally:
            worker.kill_group()

    # Then it said it waited for RabbitMQ, then gave up with the unreachable-broker status
    waiting = worker.lines("worker.waiting")
    shown = f"RabbitMQ at amqp://guest:***@127.0.0.1:{closed_port}"
    assert waiting and all(shown in line for line in waiting)
    assert code == 3
    assert any(line.startswith("error: cannot reach RabbitMQ") for line in worker.stderr)


def _exit_status_rows() -> dict[int, str]:
    """The rows of the "Exit statuses" table of docs/operating.md: status -> its text."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "operating.md").read_text()
    section = page.split("## Exit statuses", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            rows[int(cells[0])] = " | ".join(cells[1:])
    return rows
