"""Waiting at start for the servers a worker needs: its Redis, and RabbitMQ when it is the broker.

A worker started before its Redis (a shell, honcho, a systemd unit without ``Restart=``, a
machine booting) waits for it instead of exiting, as Celery's workers do: it tries again every
second or so and says once every :data:`SAY_EVERY` seconds what it waits for, for up to
``SOULSPOT_STARTUP_WAIT`` seconds (default: until it comes; ``0``: not at all, the exit status
says what was missing). Only a server that does not answer is waited for; a malformed URL or
refused credentials end the start at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TypeVar

import structlog

from soulspot_jobs.embedded.connection import RedisUnavailable, redis_for, redis_in_use
from soulspot_jobs.settings import Settings

log = structlog.get_logger("soulspot_jobs.worker")

T = TypeVar("T")

#: Seconds between two tries.
RETRY_EVERY = 1.0
#: Seconds between two log lines saying what the worker waits for.
SAY_EVERY = 5.0


def wait_for_redis(settings: Settings, using: ExitStack) -> str:
    """The URL of the Redis of ``settings``, entered into ``using`` (the embedded server is used
    until ``using`` closes), waiting for it as the module docstring says."""
    return wait_for(
        redis_in_use(settings).removeprefix("using "),
        lambda: using.enter_context(redis_for(settings)),
        waits_out=lambda exc: isinstance(exc, RedisUnavailable) and exc.unreachable,
        patience=settings.startup_wait,
    )


def check_rabbitmq(url: str) -> None:
    """Connect to the RabbitMQ at ``url`` and leave; raises pika's ``AMQPConnectionError`` when
    it does not answer (Dramatiq's RabbitMQ broker connects lazily, so building it proves
    nothing)."""
    import pika

    pika.BlockingConnection(pika.URLParameters(url)).close()


def rabbitmq_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says RabbitMQ did not answer (refused credentials do not count)."""
    try:
        import pika.exceptions
    except ImportError:  # installed without the rabbitmq extra: no RabbitMQ to wait for
        return False
    return isinstance(exc, pika.exceptions.AMQPConnectionError) and not isinstance(
        exc, pika.exceptions.ProbableAuthenticationError | pika.exceptions.ProbableAccessDeniedError
    )


def wait_for(
    what: str,
    attempt: Callable[[], T],
    *,
    waits_out: Callable[[BaseException], bool],
    patience: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``attempt()``'s result, trying again while it raises an error ``waits_out`` accepts,
    for up to ``patience`` seconds (``inf``: for ever); then that error is raised."""
    started = clock()
    said_at = -math.inf
    while True:
        try:
            result = attempt()
        except Exception as exc:
            waited = clock() - started
            if not waits_out(exc) or waited + RETRY_EVERY > patience:
                raise
            if clock() - said_at >= SAY_EVERY:
                said_at = clock()
                limit = "until it answers" if math.isinf(patience) else f"up to {patience:g} s"
                why = str(exc) or type(exc).__name__
                log.warning(
                    f"Waiting for {what} ({why}); {waited:.0f} s so far, {limit} "
                    "(SOULSPOT_STARTUP_WAIT)",
                    event_name="worker.waiting",
                    waiting_for=what,
                    waited=round(waited, 1),
                )
            sleep(RETRY_EVERY)
            continue
        if said_at > -math.inf:
            log.info(f"{what} answers: starting", event_name="worker.waited", waiting_for=what)
        return result
