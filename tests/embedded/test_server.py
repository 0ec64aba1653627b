"""The embedded redis-server: loopback only, no persistence, always stopped."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis

from soulspot_jobs.embedded.server import EmbeddedRedis, RedisServerError, find_redis_server

#: Seconds a test waits for a process to end before it fails.
EXIT_DEADLINE = 10.0


def _wait_for_exit(pid: int, timeout: float = EXIT_DEADLINE) -> bool:
    """Block until process ``pid`` (not necessarily our child) has ended; False on timeout."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([descriptor], [], [], timeout)
        return bool(readable)
    finally:
        os.close(descriptor)


def test_find_redis_server_returns_an_executable_binary() -> None:
    # When the binary is looked up
    path = find_redis_server()

    # Then it is an executable file
    assert os.access(path, os.X_OK)


def test_the_session_server_answers_commands(redis_client: redis.Redis) -> None:
    # Given the session's embedded Redis, emptied for this test
    # When a key is written and read back
    redis_client.set("greeting", "hello")

    # Then the real server answers
    assert redis_client.get("greeting") == b"hello"
    assert redis_client.dbsize() == 1


def test_the_server_listens_on_loopback_without_persistence() -> None:
    # Given a started server
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        try:
            # When its configuration is read
            bind = client.config_get("bind")["bind"]
            save = client.config_get("save")["save"]
            appendonly = client.config_get("appendonly")["appendonly"]
        finally:
            client.close()

    # Then it binds 127.0.0.1 only and never writes data to disk
    assert server.host == "127.0.0.1"
    assert bind == "127.0.0.1"
    assert save == ""
    assert appendonly == "no"


def test_two_servers_run_side_by_side_on_different_ports() -> None:
    # Given two servers started one after the other
    with EmbeddedRedis() as first, EmbeddedRedis() as second:
        # Then each has its own port and its own data
        assert first.port != second.port
        with redis.Redis.from_url(first.url) as a, redis.Redis.from_url(second.url) as b:
            a.set("owner", "first")
            assert b.get("owner") is None


def test_servers_start_from_several_processes_at_once() -> None:
    # Given a script that starts a server, writes to it and stops it
    script = textwrap.dedent(
        """
        import redis
        from soulspot_jobs.embedded.server import EmbeddedRedis
        with EmbeddedRedis() as server, redis.Redis.from_url(server.url) as client:
            client.set("k", "v")
            print(server.port)
        """
    )

    # When three processes run it concurrently
    processes = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=60)[0] for process in processes]

    # Then every one of them got a server of its own
    assert [process.returncode for process in processes] == [0, 0, 0]
    assert all(output.strip().isdigit() for output in outputs)


def test_a_unix_socket_server_serves_a_unix_url() -> None:
    # Given a server in unix-socket mode
    with EmbeddedRedis(unix_socket=True) as server:
        # Then its URL points at a socket file and it answers on it
        assert server.url.startswith("unix://")
        assert server.port is None
        assert server.socket_path is not None and Path(server.socket_path).is_socket()
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()


def test_stopping_ends_the_process_and_removes_its_directory() -> None:
    # Given a running server and its data directory
    server = EmbeddedRedis().start()
    pid = server.pid
    assert pid is not None
    with redis.Redis.from_url(server.url) as client:
        directory = Path(client.config_get("dir")["dir"])
    assert directory.is_dir()

    # When it is stopped, twice
    server.stop()
    server.stop()

    # Then its process has ended and its directory is gone
    assert _wait_for_exit(pid)
    assert not directory.exists()
    with pytest.raises(RedisServerError):
        _ = server.url


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_the_server_dies_with_a_killed_parent_process() -> None:
    # Given a Python process that started a server and waits forever
    script = textwrap.dedent(
        """
        import sys
        import redis
        from soulspot_jobs.embedded.server import EmbeddedRedis
        server = EmbeddedRedis().start()
        with redis.Redis.from_url(server.url) as client:
            directory = client.config_get("dir")["dir"]
        print(server.pid, directory, flush=True)
        sys.stdin.read()
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    pid, directory = parent.stdout.readline().split()

    # When that process is killed without any chance to clean up
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=EXIT_DEADLINE)
    parent.stdin.close()
    parent.stdout.close()

    # Then its redis-server ends too (its directory is left behind: nobody could remove it)
    assert _wait_for_exit(int(pid))
    shutil.rmtree(directory)


def test_a_server_that_cannot_start_raises_with_its_log_tail(tmp_path: Path) -> None:
    # Given an executable that prints a complaint and exits
    broken = tmp_path / "redis-server"
    broken.write_text("#!/bin/sh\necho 'FATAL: cannot open config'\nexit 1\n")
    broken.chmod(0o755)

    # When it is started as the server
    with pytest.raises(RedisServerError) as raised:
        EmbeddedRedis(executable=str(broken)).start()

    # Then the error says it exited and quotes its log
    assert "exited with code 1" in str(raised.value)
    assert "FATAL: cannot open config" in str(raised.value)
