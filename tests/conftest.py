"""Fixtures shared by every test: one real redis-server per session, flushed before each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from soulspot_jobs.redis_server import EmbeddedRedis
from soulspot_jobs.shared_redis import SharedRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A real redis-server on a free loopback port, stopped when the session ends."""
    with EmbeddedRedis() as server:
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
