"""Talking to the shared server: a client that never retries, PING and SHUTDOWN."""

from __future__ import annotations

import contextlib
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

#: Seconds redis-server may take to answer PING after starting (it loads the append-only file).
STARTUP_TIMEOUT = 30.0
#: Seconds to wait for redis-server to exit after SHUTDOWN, then after SIGTERM.
STOP_TIMEOUT = 10.0
#: Seconds between two PINGs of a server that did not answer.
_RETRY_INTERVAL = 0.05


def client_for(socket_path: str, timeout: float = 1.0) -> redis.Redis:
    """A client on the server's socket that fails at once instead of retrying with backoff."""
    return redis.Redis(
        unix_socket_path=socket_path,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def shutdown_server(socket_path: str) -> None:
    """Ask the server on ``socket_path`` to SHUTDOWN (flushing its append-only file)."""
    client = client_for(socket_path, STOP_TIMEOUT)
    try:
        with contextlib.suppress(redis.RedisError, OSError):
            client.shutdown()
    finally:
        client.close()


def answers(socket_path: str, within: float = 0.0) -> bool:
    """Whether a server answers PING on ``socket_path``, asking again for ``within`` seconds.

    Each attempt waits a second at most. A server still loading its append-only file, or too
    busy to answer one PING on a loaded machine, gets the whole ``within`` to answer one.
    """
    if not socket_path:
        return False
    deadline = time.monotonic() + within
    client = client_for(socket_path)
    try:
        while True:
            with contextlib.suppress(redis.RedisError, OSError):
                if client.ping():
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_RETRY_INTERVAL)
    finally:
        client.close()
