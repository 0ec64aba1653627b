"""Talking to the shared server: a client that never retries, PING and SHUTDOWN."""

from __future__ import annotations

import contextlib

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

#: Seconds redis-server may take to answer PING after starting (it loads the append-only file).
STARTUP_TIMEOUT = 30.0
#: Seconds to wait for redis-server to exit after SHUTDOWN, then after SIGTERM.
STOP_TIMEOUT = 10.0


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


def answers(socket_path: str) -> bool:
    """Whether a server answers PING on ``socket_path`` within a second."""
    if not socket_path:
        return False
    client = client_for(socket_path)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()
