"""The one way every command gets its Redis: ``with redis_for(settings) as url: ...``.

* ``REDIS_URL`` set (``redis://``, ``rediss://``, ``unix://``, with a password and a database
  number if needed): nothing is started. The URL is checked for its form, then PINGed with a
  short timeout and no retries, so a malformed URL or an unreachable server is reported in one
  line within seconds instead of a hang or a traceback.
* ``REDIS_URL`` unset: the process attaches to the shared embedded server of
  ``SOULSPOT_DATA_DIR`` (see :mod:`soulspot_jobs.embedded`), starting it if no process has;
  leaving the block detaches, and the last process to leave stops the server.

Operator commands say on stderr which one they use (:func:`redis_in_use`), and say so plainly
when the data directory was created for them: a command run from another directory gets another,
empty Redis.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from soulspot_jobs.embedded import SharedRedis, SharedRedisError
from soulspot_jobs.embedded.server import RedisServerError
from soulspot_jobs.errors import SoulspotJobsError
from soulspot_jobs.logging import redact_url
from soulspot_jobs.settings import Settings

#: Seconds to wait for ``REDIS_URL``'s server to accept the connection, then to answer PING.
CONNECT_TIMEOUT = 3.0
#: Exit status of a command whose ``REDIS_URL`` is malformed (a bad setting).
EXIT_BAD_URL = 2
#: Exit status of a command that found no Redis to use (as every operator command gives).
EXIT_NO_REDIS = 1
#: URL schemes redis-py connects with.
SCHEMES = ("redis", "rediss", "unix")
#: The path of a ``redis://`` URL: nothing, ``/`` or ``/<database number>``.
_DB_PATH = re.compile(r"/?\d*")


class RedisUnavailable(SoulspotJobsError):
    """No Redis to work with; ``str()`` is the one line to show the user.

    ``exit_code`` is the status a command should exit with: ``EXIT_BAD_URL`` for a malformed
    ``REDIS_URL``, ``EXIT_NO_REDIS`` for a server that cannot be reached or started.
    ``unreachable``: the server did not answer (not there yet, or down), so it may come; a
    malformed URL or refused credentials will not mend themselves.
    """

    def __init__(
        self, message: str, *, exit_code: int = EXIT_NO_REDIS, unreachable: bool = False
    ) -> None:
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code
        self.unreachable = unreachable


def data_dir(settings: Settings) -> Path:
    """The absolute data directory of the embedded server (``SOULSPOT_DATA_DIR``)."""
    return Path(settings.data_dir).expanduser().absolute()


def redis_in_use(settings: Settings, *, created: bool = False) -> str:
    """The line a command prints on stderr to say which Redis it works on: ``REDIS_URL``'s
    server (password hidden), or the embedded server of the data directory. ``created``: the
    command just created that directory, so its Redis holds nothing from any other directory;
    the line says so, and how to share one.
    """
    if settings.redis_url is not None:
        return f"using Redis at {redact_url(settings.redis_url)}"
    line = f"using embedded Redis in {data_dir(settings)}"
    if created:
        line += (
            " (created just now: no jobs from other directories are here; "
            "set SOULSPOT_DATA_DIR or REDIS_URL to share one)"
        )
    return line


def creates_data_dir(settings: Settings) -> bool:
    """Whether using the embedded Redis of ``settings`` would create its data directory now
    (``REDIS_URL`` unset and no such directory yet)."""
    return settings.redis_url is None and not data_dir(settings).exists()


def embedded_server(settings: Settings) -> SharedRedis:
    """The shared embedded server of ``settings``' data directory (not started by this call)."""
    return SharedRedis(data_dir(settings))


@contextmanager
def redis_for(settings: Settings) -> Iterator[str]:
    """A Redis URL ready to use for the duration of the block; raises :class:`RedisUnavailable`.

    With ``REDIS_URL`` set it is checked (form, then PING within ``CONNECT_TIMEOUT`` s) and
    yielded as it is. Without it this process attaches to the embedded server (started if none
    runs) and detaches when the block ends.
    """
    if settings.redis_url is not None:
        check_redis_url(settings.redis_url)
        yield settings.redis_url
        return
    server = embedded_server(settings)
    try:
        url = server.attach()
    except (SharedRedisError, RedisServerError) as exc:
        raise RedisUnavailable(str(exc)) from None
    try:
        yield url
    finally:
        server.detach()


def check_redis_url(url: str, *, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise :class:`RedisUnavailable` unless ``url`` is well formed and its server answers PING."""
    shown = f"REDIS_URL={redact_url(url)!r}"
    problem = _form_problem(url)
    if problem is not None:
        raise RedisUnavailable(f"invalid setting {shown}: {problem}", exit_code=EXIT_BAD_URL)
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(f"Redis at {shown} refused the credentials: {exc}") from None
    except redis.TimeoutError:
        raise RedisUnavailable(
            f"cannot reach Redis at {shown}: no answer within {timeout:g} s", unreachable=True
        ) from None
    except (redis.RedisError, OSError) as exc:
        reason = redact_url(str(exc)) or type(exc).__name__
        raise RedisUnavailable(
            f"cannot reach Redis at {shown}: {reason}", unreachable=True
        ) from None
    finally:
        client.close()


def _form_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL redis-py can use, or ``None`` when it is."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in SCHEMES:
        return "it must start with redis://, rediss:// or unix://"
    try:
        parse_url(url)
    except ValueError as exc:
        return str(exc)
    if parts.scheme == "unix":
        return None if parts.path else "a unix:// URL needs the socket's path (unix:///path)"
    if not parts.hostname:
        return f"a {parts.scheme}:// URL needs a host ({parts.scheme}://host:6379/0)"
    if not _DB_PATH.fullmatch(parts.path):
        return f"the path {parts.path!r} is not a database number (/0)"
    return None
