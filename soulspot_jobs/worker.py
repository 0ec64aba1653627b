"""The module Dramatiq's worker command loads: ``dramatiq soulspot_jobs.worker``.

Importing it reads the settings from the environment (``REDIS_URL`` must be set: every worker
process must share one Redis), configures logging and declares the actors on the broker. This
module exists for the worker command; programs should build :class:`SoulspotJobs` themselves.

A setting that cannot be used, or a Redis that does not answer, stops each worker process with
one line on stderr (``error: invalid setting ...``, as ``soulspot-jobs`` prints it) instead of a
traceback; the command then exits with that process's status.
"""

import sys

import dramatiq
import redis

from soulspot_jobs.app import SoulspotJobs
from soulspot_jobs.errors import ConfigurationError
from soulspot_jobs.logging import configure_logging
from soulspot_jobs.settings import load_settings

#: Exit status of a worker process refused because of an invalid setting (as ``soulspot-jobs``).
EXIT_BAD_SETTINGS = 2
#: Exit status when Redis does not answer PING (Dramatiq's own "broker connection failed").
EXIT_NO_REDIS = 3
#: Seconds to wait for Redis to accept a connection and answer PING at start-up.
PING_TIMEOUT = 5.0


def _refusal(message: str, status: int) -> SystemExit:
    """Print ``error: message`` as the process's only line; the exit to raise with ``status``."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return SystemExit(status)


try:
    settings = load_settings()
    configure_logging(settings)
    jobs = SoulspotJobs(settings)
except ConfigurationError as exc:
    raise _refusal(str(exc), EXIT_BAD_SETTINGS) from None
if settings.redis_url:
    # A client of its own, with timeouts, closed at once: the broker's pool stays untouched.
    probe = redis.Redis.from_url(
        settings.redis_url, socket_timeout=PING_TIMEOUT, socket_connect_timeout=PING_TIMEOUT
    )
    try:
        probe.ping()
    except redis.RedisError as exc:
        where = settings.redis_url_redacted
        raise _refusal(f"cannot reach Redis at {where}: {exc}", EXIT_NO_REDIS) from None
    finally:
        probe.close()
broker = jobs.broker
dramatiq.set_broker(broker)
