"""``redis_for`` with REDIS_URL: nothing started, and a bad URL or server reported in one line."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from soulspot_jobs.embedded.connection import (
    CONNECT_TIMEOUT,
    EXIT_BAD_URL,
    EXIT_NO_REDIS,
    RedisUnavailable,
    creates_data_dir,
    redis_for,
    redis_in_use,
)
from soulspot_jobs.embedded.server import EmbeddedRedis
from soulspot_jobs.settings import load_settings
from tests.processes import SOULSPOT_JOBS, environment

#: Seconds a refused command may take, start-up of the interpreter included.
REFUSAL_DEADLINE = CONNECT_TIMEOUT + 12.0


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


def _worker_with(redis_url: str, data_dir: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``soulspot-jobs worker`` run with ``REDIS_URL=redis_url`` and no start-up wait; its
    result and its duration."""
    started = time.monotonic()
    result = subprocess.run(
        [SOULSPOT_JOBS, "worker", "--processes", "1"],
        env=environment(data_dir, REDIS_URL=redis_url, SOULSPOT_STARTUP_WAIT="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, time.monotonic() - started


def _assert_one_line_refusal(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    assert result.returncode == exit_code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "REDIS_URL" in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "bad_url",
    ["notaurl", "http://127.0.0.1:6379/0", "redis://127.0.0.1:port/0", "redis://127.0.0.1/x"],
)
def test_a_malformed_redis_url_stops_the_worker_command_with_one_line(
    bad_url: str, data_dir: Path
) -> None:
    # When the worker command is started with a malformed REDIS_URL
    result, took = _worker_with(bad_url, data_dir)

    # Then it refuses at once in one line naming the variable, and starts nothing
    line = _assert_one_line_refusal(result, EXIT_BAD_URL)
    assert bad_url in line
    assert took < REFUSAL_DEADLINE
    assert not data_dir.exists()


def test_an_unreachable_redis_stops_the_worker_command_with_one_line_without_the_password(
    closed_port: int, data_dir: Path
) -> None:
    # When the worker command is started on a Redis nobody listens for
    url = f"redis://:hunter2@127.0.0.1:{closed_port}/0"
    result, took = _worker_with(url, data_dir)

    # Then it says so in one line, the password hidden, within seconds
    line = _assert_one_line_refusal(result, EXIT_NO_REDIS)
    assert "cannot reach Redis" in line
    assert "hunter2" not in result.stderr + result.stdout
    assert f"redis://:***@127.0.0.1:{closed_port}/0" in line
    assert took < REFUSAL_DEADLINE


def test_a_redis_that_never_answers_is_given_up_on_after_the_connect_timeout(
    silent_port: int, data_dir: Path
) -> None:
    # Given settings on a server that accepts connections but never answers
    settings = load_settings(REDIS_URL=f"redis://127.0.0.1:{silent_port}/0")

    # When a command asks for its Redis
    started = time.monotonic()
    with pytest.raises(RedisUnavailable) as refused, redis_for(settings):
        pass
    took = time.monotonic() - started

    # Then it gives up after the short timeout, with one line and the no-Redis exit status
    assert CONNECT_TIMEOUT <= took < CONNECT_TIMEOUT + 2
    assert str(refused.value) == (
        f"cannot reach Redis at REDIS_URL='redis://127.0.0.1:{silent_port}/0': "
        f"no answer within {CONNECT_TIMEOUT:g} s"
    )
    assert refused.value.exit_code == EXIT_NO_REDIS


def test_a_reachable_redis_url_is_used_as_it_is_and_nothing_is_started(
    redis_url: str, data_dir: Path
) -> None:
    # Given settings with REDIS_URL on a running server, and a data directory
    settings = load_settings(REDIS_URL=redis_url, SOULSPOT_DATA_DIR=str(data_dir))

    # When a command asks for its Redis
    with redis_for(settings) as url, redis.Redis.from_url(url) as client:
        # Then it gets that URL, which works, and no embedded server was started
        assert url == redis_url
        assert client.ping()
    assert not data_dir.exists()


def test_a_url_with_a_password_and_a_database_number_is_used_as_given() -> None:
    # Given a Redis that requires a password
    with EmbeddedRedis() as server:
        with redis.Redis.from_url(server.url) as admin:
            admin.config_set("requirepass", "s3cret")
        url = f"redis://:s3cret@127.0.0.1:{server.port}/2"

        # When a command asks for its Redis with the password and database 2
        settings = load_settings(REDIS_URL=url)
        with redis_for(settings) as given, redis.Redis.from_url(given) as client:
            client.set("where", "db2")

            # Then it works on database 2
            assert given == url
            assert client.info("keyspace") == {"db2": {"keys": 1, "expires": 0, "avg_ttl": 0}}

        # And a wrong password is one line, with the password hidden
        wrong = f"redis://:wrong@127.0.0.1:{server.port}/2"
        with pytest.raises(RedisUnavailable) as refused, redis_for(load_settings(REDIS_URL=wrong)):
            pass
        assert "refused the credentials" in str(refused.value)
        assert "wrong" not in str(refused.value) and "\n" not in str(refused.value)


def test_a_unix_socket_url_with_a_database_number_is_used_as_given() -> None:
    # Given a Redis on a unix socket
    with EmbeddedRedis(unix_socket=True) as server:
        url = f"{server.url}?db=3"

        # When a command asks for its Redis on database 3 of that socket
        settings = load_settings(REDIS_URL=url)
        with redis_for(settings) as given, redis.Redis.from_url(given) as client:
            client.set("where", "db3")

            # Then it works there
            assert given == url
            assert set(client.info("keyspace")) == {"db3"}


def test_a_rediss_url_is_accepted_as_a_form_and_refused_only_for_want_of_a_server(
    closed_port: int,
) -> None:
    # When a command asks for a TLS Redis nobody serves
    url = f"rediss://:pw@127.0.0.1:{closed_port}/0"
    with pytest.raises(RedisUnavailable) as refused, redis_for(load_settings(REDIS_URL=url)):
        pass

    # Then the URL's form was fine: the server is what is missing
    assert refused.value.exit_code == EXIT_NO_REDIS
    assert str(refused.value).startswith("cannot reach Redis at REDIS_URL='rediss://:***@")


def test_the_line_saying_which_redis_is_used_hides_the_password_and_names_the_data_dir(
    tmp_path: Path,
) -> None:
    # Given settings with a REDIS_URL holding a password, and settings without one
    external = load_settings(REDIS_URL="redis://:hunter2@redis.example:6380/2")
    embedded = load_settings(SOULSPOT_DATA_DIR=str(tmp_path / "data"))

    # Then the line names the server with the password hidden, or the embedded data directory,
    # saying when it was created just now and how to share one instead
    assert redis_in_use(external) == "using Redis at redis://:***@redis.example:6380/2"
    assert not creates_data_dir(external)
    assert creates_data_dir(embedded)
    assert redis_in_use(embedded) == f"using embedded Redis in {tmp_path / 'data'}"
    assert redis_in_use(embedded, created=True) == (
        f"using embedded Redis in {tmp_path / 'data'} (created just now: no jobs from other "
        "directories are here; set SOULSPOT_DATA_DIR or REDIS_URL to share one)"
    )
    (tmp_path / "data").mkdir()
    assert not creates_data_dir(embedded)
