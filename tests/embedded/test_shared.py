"""The persistent embedded Redis that processes of one data directory share (REDIS_URL unset)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from soulspot_jobs.embedded import DataDir, SharedRedis
from soulspot_jobs.embedded.connection import redis_for
from soulspot_jobs.embedded.layout import MAX_SOCKET_PATH
from soulspot_jobs.embedded.processes import is_alive, wait_for_exit
from soulspot_jobs.settings import load_settings
from tests.polling import wait_until
from tests.processes import SOULSPOT_JOBS, Spawned, environment

#: Seconds a test waits for a server to end.
EXIT_DEADLINE = 10.0
#: Seconds within which a server that died under its users runs again (docs/operating.md).
RESTART_PROMISE = 5.0

#: A process using the embedded server through ``redis_for`` until its stdin is closed; it
#: prints the URL and the server's pid.
HOLDER = textwrap.dedent(
    """
    import sys
    import redis
    from soulspot_jobs.embedded.connection import redis_for
    from soulspot_jobs.settings import load_settings

    with redis_for(load_settings()) as url, redis.Redis.from_url(url) as client:
        print(url, client.info("server")["process_id"], flush=True)
        sys.stdin.read()
    """
)


def _holder(data_dir: Path) -> Spawned:
    return Spawned([sys.executable, "-c", HOLDER], env=environment(data_dir), cwd=data_dir.parent)


def _url_and_pid(holder: Spawned) -> tuple[str, int]:
    [line] = holder.wait_for("unix://", stream="stdout")
    url, pid = line.split()
    return url, int(pid)


def _wait_for_the_append_only_file(client: redis.Redis) -> None:
    """Until the server has written every change to its append-only file (a crash from then on
    loses nothing; with appendfsync everysec a busy disk can hold writes back up to 2 s)."""
    wait_until(
        lambda: client.info("persistence")["aof_buffer_length"] == 0,
        "the append-only file to be written",
    )


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SOULSPOT_JOBS, *args],
        env=environment(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_processes_started_at_once_share_one_server_that_stops_with_the_last(
    data_dir: Path,
) -> None:
    # Given four processes started at the same moment, none with REDIS_URL
    holders = [_holder(data_dir) for _ in range(4)]
    try:
        # When each has attached
        seen = {_url_and_pid(holder) for holder in holders}

        # Then they all use the same server: one socket, one pid, started once
        assert len(seen) == 1, seen
        [(url, pid)] = seen
        assert url == f"unix://{data_dir / 'redis.sock'}"
        assert DataDir(data_dir).log_path.read_text().count(" ready on ") == 1
        assert SharedRedis(data_dir).status().users == sorted(h.pid for h in holders)

        # When all but one leave, the server keeps running for the last one
        for holder in holders[:-1]:
            holder.close_stdin()
            assert holder.wait() == 0
        with redis.Redis.from_url(url) as client:
            assert client.ping()

        # When the last one leaves, the server stops
        holders[-1].close_stdin()
        assert holders[-1].wait() == 0
        assert wait_for_exit(pid, EXIT_DEADLINE)
        assert not SharedRedis(data_dir).status().running
    finally:
        for holder in holders:
            holder.kill_group()


def test_the_server_stops_when_its_last_user_is_killed(data_dir: Path) -> None:
    # Given one process using the server
    holder = _holder(data_dir)
    try:
        _, pid = _url_and_pid(holder)
        state = DataDir(data_dir).read_state()
        assert state is not None

        # When it is killed without a chance to leave
        holder.stop(signal.SIGKILL)

        # Then the server's supervisor notices, stops the server and exits, leaving no record
        assert wait_for_exit(pid, EXIT_DEADLINE)
        assert wait_for_exit(state.supervisor_pid, EXIT_DEADLINE)
        assert not DataDir(data_dir).state_path.exists()
    finally:
        holder.kill_group()


def test_data_survives_the_server_stopping_and_starting_again(data_dir: Path) -> None:
    # Given a key written while this process used the server
    settings = load_settings(REDIS_URL=None, SOULSPOT_DATA_DIR=str(data_dir))
    with redis_for(settings) as url, redis.Redis.from_url(url) as client:
        client.set("kept", "yes")
        first_pid = client.info("server")["process_id"]
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
    # (the last user left, so that server stopped)
    assert wait_for_exit(first_pid, EXIT_DEADLINE)

    # When the server is started again
    with redis_for(settings) as url, redis.Redis.from_url(url) as client:
        # Then it is a new process with the key read back from the append-only file
        assert client.info("server")["process_id"] != first_pid
        assert client.get("kept") == b"yes"


def test_a_killed_server_is_replaced_with_its_data_by_the_next_process(data_dir: Path) -> None:
    # Given a key written to the server, which is then killed outright
    settings = load_settings(REDIS_URL=None, SOULSPOT_DATA_DIR=str(data_dir))
    with redis_for(settings) as url:
        with redis.Redis.from_url(url) as client:
            client.set("kept", "yes")
            killed = client.info("server")["process_id"]
            _wait_for_the_append_only_file(client)
        os.kill(killed, signal.SIGKILL)
        assert wait_for_exit(killed, EXIT_DEADLINE)

        # When another process needs the server
        holder = _holder(data_dir)
        try:
            url_again, pid = _url_and_pid(holder)

            # Then it starts a new one on the same socket, with the key
            assert (url_again, pid != killed) == (url, True)
            with redis.Redis.from_url(url_again) as client:
                assert client.get("kept") == b"yes"
        finally:
            holder.close_stdin()
            holder.wait()
            holder.kill_group()


@pytest.mark.faults
def test_a_server_killed_under_a_live_user_is_restarted_with_its_data_within_5_s(
    data_dir: Path,
) -> None:
    # Given a user of the server (this process) and a key written to it
    settings = load_settings(REDIS_URL=None, SOULSPOT_DATA_DIR=str(data_dir))
    with redis_for(settings) as url, redis.Redis.from_url(url) as client:
        client.set("kept", "yes")
        killed = client.info("server")["process_id"]
        _wait_for_the_append_only_file(client)

        # When the server is killed outright, and no other process comes along
        os.kill(killed, signal.SIGKILL)
        assert wait_for_exit(killed, EXIT_DEADLINE)
        died_at = time.monotonic()

        # Then its supervisor starts it again on the same socket within 5 s, with the key
        def back() -> bool:
            try:
                return client.info("server")["process_id"] != killed
            except redis.ConnectionError:
                return False

        wait_until(back, "the server to be restarted", RESTART_PROMISE)
        assert time.monotonic() - died_at < RESTART_PROMISE
        assert client.get("kept") == b"yes"
        assert "restarting redis-server" in DataDir(data_dir).log_path.read_text()


def test_the_server_ends_when_its_supervisor_is_killed(data_dir: Path) -> None:
    # Given a running server
    server = SharedRedis(data_dir)
    server.attach()
    try:
        state = DataDir(data_dir).read_state()
        assert state is not None and is_alive(state.pid)

        # When its supervisor is killed outright
        os.kill(state.supervisor_pid, signal.SIGKILL)

        # Then the kernel's parent-death signal ends the server too
        assert wait_for_exit(state.pid, EXIT_DEADLINE)
    finally:
        server.detach()


def test_redis_stop_stops_a_server_in_use_and_keeps_its_data(data_dir: Path) -> None:
    # Given a process using the server, and a key in it
    holder = _holder(data_dir)
    try:
        url, pid = _url_and_pid(holder)
        with redis.Redis.from_url(url) as client:
            client.set("kept", "yes")

        # When the operator stops it
        stopped = _cli(data_dir, "redis", "stop")

        # Then the server is gone, the command said so, and a later start finds the key
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped pid {pid}" in stopped.stdout
        assert "still used by 1 process" in stopped.stdout
        assert wait_for_exit(pid, EXIT_DEADLINE)
        status = _cli(data_dir, "redis", "status")
        assert "not running" in status.stdout
        assert "not running" in _cli(data_dir, "redis", "stop").stdout
        with SharedRedisSession(data_dir) as client:
            assert client.get("kept") == b"yes"
    finally:
        holder.close_stdin()
        holder.wait()
        holder.kill_group()


def test_redis_status_shows_where_the_server_lives_and_who_uses_it(data_dir: Path) -> None:
    # Given a process using the server
    holder = _holder(data_dir)
    try:
        url, pid = _url_and_pid(holder)

        # When the operator asks for its status, as text and as JSON
        text = _cli(data_dir, "redis", "status")
        document = json.loads(_cli(data_dir, "redis", "status", "--json").stdout)

        # Then both name the socket, the pid and the user
        assert f"pid {pid}, {url}" in text.stdout
        assert str(holder.pid) in text.stdout
        assert document["running"] is True
        assert (document["url"], document["pid"], document["users"]) == (url, pid, [holder.pid])
        assert document["data_dir"] == str(data_dir)
    finally:
        holder.close_stdin()
        holder.wait()
        holder.kill_group()


def test_a_deep_data_directory_gets_its_socket_under_the_temp_dir(tmp_path: Path) -> None:
    # Given a data directory whose socket path would be longer than the kernel accepts
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(deep / "redis.sock")) > MAX_SOCKET_PATH

    # When the server starts there
    server = SharedRedis(deep)
    try:
        url = server.attach()

        # Then it listens on a short path elsewhere and answers there
        assert len(url) - len("unix://") <= MAX_SOCKET_PATH
        with redis.Redis.from_url(url) as client:
            assert client.ping()
    finally:
        server.detach()
        server.stop()


class SharedRedisSession:
    """This process attached to ``data_dir``'s server, with a client; detached on exit."""

    def __init__(self, data_dir: Path) -> None:
        self.server = SharedRedis(data_dir)

    def __enter__(self) -> redis.Redis:
        self.client = redis.Redis.from_url(self.server.attach())
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.detach()
