"""The module Dramatiq's worker command loads: ``dramatiq soulspot_jobs.worker``.

Importing it reads the settings from the environment, configures logging, gets the Redis every
worker process shares (``REDIS_URL``, or the embedded server of ``SOULSPOT_DATA_DIR``, which
this process then uses until it exits) and declares the actors on the broker. This module exists
for the worker command; programs should build :class:`SoulspotJobs` themselves.

A Redis (or RabbitMQ) that does not answer yet is waited for, with a line every few seconds,
for up to ``SOULSPOT_STARTUP_WAIT`` seconds (default: until it answers; see
:mod:`soulspot_jobs.broker.startup`). A setting that cannot be used (among them a
``MUSICBRAINZ_CONTACT`` that reaches no one while ``MUSICBRAINZ_URL`` is the real MusicBrainz),
or a Redis that still does not answer, stops each worker process with one line on stderr
(``error: invalid setting ...``, as ``soulspot-jobs`` prints it) instead of a traceback; the
command then exits with that process's status.
"""

import atexit
import sys
from contextlib import ExitStack

import dramatiq

from soulspot_jobs.broker import AMQP_SCHEMES
from soulspot_jobs.broker.startup import (
    check_rabbitmq,
    rabbitmq_unreachable,
    wait_for,
    wait_for_redis,
)
from soulspot_jobs.clients.musicbrainz import contact_problem
from soulspot_jobs.embedded.connection import (
    EXIT_BAD_URL,
    RedisUnavailable,
)
from soulspot_jobs.errors import ConfigurationError
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.logging import configure_logging
from soulspot_jobs.middleware.exit_guard import guard_worker_process
from soulspot_jobs.settings import load_settings
from soulspot_jobs.urls import redact_url

#: Exit status of a worker process refused because of an invalid setting (as ``soulspot-jobs``).
EXIT_BAD_SETTINGS = 2
#: Exit status when Redis does not answer PING (Dramatiq's own "broker connection failed").
EXIT_NO_REDIS = 3


def _refusal(message: str, status: int) -> SystemExit:
    """Print ``error: message`` as the process's only line; the exit to raise with ``status``."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return SystemExit(status)


# First: even a worker process whose boot fails must be able to exit (see guard_worker_process).
guard_worker_process()

#: Holds this process's use of the Redis until the interpreter exits.
_redis = ExitStack()
atexit.register(_redis.close)
try:
    settings = load_settings()
    configure_logging(settings)
    refused = contact_problem(settings.musicbrainz)
    if refused is not None:
        raise ConfigurationError(refused)
    redis_url = wait_for_redis(settings, _redis)
    if settings.broker_url and settings.broker_url.startswith(AMQP_SCHEMES):
        wait_for(
            f"RabbitMQ at {redact_url(settings.broker_url)}",
            lambda: check_rabbitmq(settings.broker_url),
            waits_out=rabbitmq_unreachable,
            patience=settings.startup_wait,
        )
    jobs = SoulspotJobs(settings, url=redis_url)
except ConfigurationError as exc:
    raise _refusal(str(exc), EXIT_BAD_SETTINGS) from None
except RedisUnavailable as exc:
    status = EXIT_BAD_SETTINGS if exc.exit_code == EXIT_BAD_URL else EXIT_NO_REDIS
    raise _refusal(str(exc), status) from None
except Exception as exc:
    if not rabbitmq_unreachable(exc):
        raise
    raise _refusal(f"cannot reach RabbitMQ at BROKER_URL: {exc!r}", EXIT_NO_REDIS) from None
broker = jobs.broker
dramatiq.set_broker(broker)
