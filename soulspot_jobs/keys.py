"""Every Redis key soulspot-jobs writes: who owns it, and how it stops growing.

``KEY_LAYOUT`` is the one list of them (the README's *Redis keys* table says the same). Each key
either carries a TTL, or is deleted by its owner, or is one of the few ``persistent`` keys whose
owner keeps it small (one hash per breaker, the job index). The test suite runs jobs to the end
and checks with SCAN that every key found is listed here, and that every key without a TTL is a
persistent one.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True, slots=True)
class KeyFamily:
    """Keys matching one glob pattern (``{prefix}`` is ``SOULSPOT_KEY_PREFIX``)."""

    pattern: str
    #: The code that writes and removes these keys.
    owner: str
    #: How they stop growing.
    lifetime: str
    #: True when a key may legitimately have no TTL once every job is finished.
    persistent: bool = False

    def matches(self, key: str, prefix: str) -> bool:
        return fnmatchcase(key, self.pattern.format(prefix=prefix))


KEY_LAYOUT: tuple[KeyFamily, ...] = (
    KeyFamily(
        "{prefix}:breaker:*",
        "circuit breaker (RedisBackend), one hash per service",
        "kept: a few fields per service; `reset` keeps the totals",
        persistent=True,
    ),
    KeyFamily(
        "{prefix}:deferred:deferrals_total",
        "deferred index (middleware): deferrals counted per service, for metrics",
        "persistent: one counter per service",
        persistent=True,
    ),
    KeyFamily(
        "{prefix}:deferred:*",
        "deferred index (middleware): one hash per service, and the set of services",
        "an entry is removed when its message runs or is dead-lettered (an empty hash is gone);"
        " each key expires 8 days after its last deferral",
    ),
    KeyFamily(
        "{prefix}:ratelimit:*",
        "shared MusicBrainz rate limiter",
        "expires (PX) the moment its last reserved slot has passed",
    ),
    KeyFamily(
        "{prefix}:jobs:job:*",
        "job records (JobStore), one hash per job",
        "kept while the job runs; expires SOULSPOT_JOB_TTL after it is done or failed",
    ),
    KeyFamily(
        "{prefix}:jobs:all",
        "job index (JobStore), a sorted set of job ids",
        "ids whose record expired are trimmed when jobs finish and when jobs are listed",
        persistent=True,
    ),
    KeyFamily(
        "{prefix}:jobs:unfinished",
        "job store: ids of the jobs not yet done or failed, read by the orphan check",
        "an id leaves when its job is done or failed",
        persistent=True,
    ),
    KeyFamily(
        "{prefix}:deadletter-hops:*",
        "middleware: dead-letter hops that reached the dead-letter queue",
        "each expires after 7 days, as Dramatiq's dead letters do",
    ),
    KeyFamily(
        "{prefix}:recovery:*",
        "recovery: the marker that Redis kept its data, the orphan check's lease",
        "each expires (PX) unless a live worker renews it",
    ),
    KeyFamily(
        "{prefix}:demo:*",
        "the demo's retry and deferral tallies",
        "expire with the demo run",
    ),
    KeyFamily(
        "{prefix}:dramatiq:__heartbeats__",
        "Dramatiq's RedisBroker: one entry per worker process",
        "a stopped worker's entry is removed by the broker's maintenance",
        persistent=True,
    ),
    KeyFamily(
        "{prefix}:dramatiq:*.XQ*",
        "Dramatiq's dead-letter queues",
        "dead letters older than `dead_message_ttl` (7 days) are removed by maintenance",
        persistent=True,
    ),
    KeyFamily(
        "{prefix}:dramatiq:*",
        "Dramatiq's queues, delay queues and ack sets",
        "a message is removed when it is acked; Redis deletes a queue once empty",
    ),
)


def family_of(key: str, prefix: str) -> KeyFamily | None:
    """The first family of ``KEY_LAYOUT`` that ``key`` belongs to, if any."""
    return next((family for family in KEY_LAYOUT if family.matches(key, prefix)), None)
