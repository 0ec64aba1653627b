"""Fixtures shared by every test: one real Redis-compatible server per session, flushed before
each test.

``SOULSPOT_TEST_REDIS`` picks the server (``redis6``, the default, ``valkey`` or ``redis7``; see
:mod:`tests.servers`). Asking for one that is not available stops the run with an error before
any test runs.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from soulspot_jobs.embedded import SharedRedis
from soulspot_jobs.embedded.server import EmbeddedRedis
from tests.servers import RedisKind, ServerUnavailable, resolve, selected_kind

_KIND: RedisKind | None = None
#: Where a process a test starts without a MusicBrainz of its own sends MusicBrainz requests: a
#: closed loopback port. No test reaches the real service, and a worker pointed at it with the
#: default contact would refuse to start (see ``contact_problem``).
NO_MUSICBRAINZ = "http://127.0.0.1:9"


def pytest_configure(config: pytest.Config) -> None:
    global _KIND
    os.environ.setdefault("MUSICBRAINZ_URL", NO_MUSICBRAINZ)
    try:
        _KIND = resolve(selected_kind())
    except ServerUnavailable as exc:
        raise pytest.UsageError(f"the test server is not available: {exc}") from None


def pytest_report_header(config: pytest.Config) -> str:
    assert _KIND is not None
    return f"redis server: {_KIND.name} ({_KIND.version.split(' sha=')[0]}) {_KIND.executable}"


@pytest.fixture(scope="session")
def redis_kind() -> RedisKind:
    """The server kind of this run, as picked by ``SOULSPOT_TEST_REDIS``."""
    assert _KIND is not None
    return _KIND


@pytest.fixture(scope="session")
def redis_server(redis_kind: RedisKind) -> Iterator[EmbeddedRedis]:
    """A real server of the run's kind on a free loopback port, stopped when the session ends."""
    with EmbeddedRedis(executable=redis_kind.executable) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the session's Redis, emptied (FLUSHALL) so each test starts from no keys."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A redis-py client of the emptied session Redis, closed after the test."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty ``SOULSPOT_DATA_DIR``; an embedded Redis a test left running there is stopped."""
    directory = tmp_path / "data"
    yield directory
    SharedRedis(directory).stop()
