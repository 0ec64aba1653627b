"""The one way commands reach Redis: :func:`redis_for` yields a ready Redis URL.

This minimal form needs ``REDIS_URL``: it checks that the server answers and yields the URL, or
raises :class:`RedisUnavailable` with one line saying why.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from soulspot_jobs.errors import SoulspotJobsError
from soulspot_jobs.logging import redact_url
from soulspot_jobs.settings import Settings

#: Seconds to wait for the server to accept a connection and answer PING.
CONNECT_TIMEOUT = 3.0


class RedisUnavailable(SoulspotJobsError):
    """No Redis server can be reached with the settings given."""


@contextmanager
def redis_for(settings: Settings) -> Iterator[str]:
    """Yield the URL of a Redis server that answers PING, else raise :class:`RedisUnavailable`."""
    url = settings.redis_url
    if not url:
        raise RedisUnavailable("REDIS_URL is not set: point it at a Redis server")
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=CONNECT_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT
        )
    except ValueError as exc:
        raise RedisUnavailable(f"invalid REDIS_URL={redact_url(url)!r}: {exc}") from None
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RedisUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    finally:
        client.close()
    yield url
