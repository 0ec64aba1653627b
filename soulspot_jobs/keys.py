"""Every Redis key soulspot-jobs uses: its name, who owns it, and how it stops growing.

:class:`Keys` is the one place key names are built. Each component is handed the ``Keys`` of its
deployment (``SOULSPOT_KEY_PREFIX``, default ``soulspot``) and asks it for names; none formats a
key of its own. Two components lay out keys under a namespace ``Keys`` gives them, as libraries
do: the breakers' Redis backend (``<breakers>:<service>`` and the channel ``<breakers>:events``;
the peer breakers' ``<breakers>:peer:<user>`` and ``<breakers>:peer:events``) and Dramatiq's Redis
broker (its queues, delay queues, ack sets and dead letters).

:data:`LAYOUT` lists every key family with its owner and lifetime (``docs/architecture.md``'s *Redis
keys* table says the same). Each key either carries a TTL, or is deleted by its owner, or is one
of the few ``persistent`` keys whose owner keeps it small. The test suite runs jobs to the end and
checks with SCAN that every key found belongs to a family, and that every key without a TTL
belongs to a persistent one.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

#: The default ``SOULSPOT_KEY_PREFIX``.
DEFAULT_PREFIX = "soulspot"


class Keys:
    """The key names of one deployment, all under ``prefix``."""

    __slots__ = (
        "prefix",
        "breakers",
        "peer_breakers",
        "dramatiq",
        "deferred_services",
        "deferral_totals",
        "job_index",
        "unfinished_jobs",
        "recovery_marker",
        "orphan_check_lease",
        "workers",
        "demo_retries",
    )

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        #: The breakers' namespace (a library's layout under it): one hash per breaker, and the
        #: channel of view changes.
        self.breakers = f"{prefix}:breaker"
        #: The per-peer breakers' namespace (Soulseek peers): one hash per slskd user name.
        self.peer_breakers = f"{self.breakers}:peer"
        #: The namespace of Dramatiq's Redis broker (its queues, ack sets, dead letters).
        self.dramatiq = f"{prefix}:dramatiq"
        #: Set of the services with a deferred hash.
        self.deferred_services = f"{prefix}:deferred:services"
        #: Hash service -> deferrals ever counted (a message deferred twice counts twice).
        self.deferral_totals = f"{prefix}:deferred:deferrals_total"
        #: Sorted set of every job id, scored by creation time.
        self.job_index = f"{prefix}:jobs:all"
        #: Sorted set of the jobs not yet done, failed or cancelled, by their last sign of life.
        self.unfinished_jobs = f"{prefix}:jobs:unfinished"
        #: Marker that Redis kept its data since a worker last looked.
        self.recovery_marker = f"{prefix}:recovery:alive"
        #: Lease of the one worker process that runs the orphan check.
        self.orphan_check_lease = f"{prefix}:recovery:orphan-check"
        #: Hash worker id -> JSON description of a live worker process (WorkerPresence).
        self.workers = f"{prefix}:workers"
        #: The demo's tally of retries: message id -> highest ``retries`` seen.
        self.demo_retries = f"{prefix}:demo:retries"

    def __repr__(self) -> str:
        return f"Keys({self.prefix!r})"

    def deferred(self, service: str) -> str:
        """Hash of the messages ``service``'s breaker deferred: message id -> JSON entry."""
        return f"{self.prefix}:deferred:{service}"

    def dead_letter_reason(self, message_id: str) -> str:
        """Why the message ``message_id`` was dead-lettered by the project's Retries."""
        return f"{self.prefix}:dead-letter:{message_id}"

    def job(self, job_id: str) -> str:
        """Hash of one job's record."""
        return f"{self.prefix}:jobs:job:{job_id}"

    def rate_limit(self, name: str) -> str:
        """The shared rate limiter ``name`` (``musicbrainz``)."""
        return f"{self.prefix}:ratelimit:{name}"

    def demo_deferrals(self, service: str) -> str:
        """The demo's tally of deferrals by ``service``: message id -> highest count seen."""
        return f"{self.prefix}:demo:deferrals:{service}"

    def demo_deferred_runs(self, service: str) -> str:
        """The demo's record of when messages deferred by ``service`` started to run: a sorted
        set of ``<message id>:<deferrals>`` scored by epoch seconds of the Redis server."""
        return f"{self.prefix}:demo:deferred-runs:{service}"

    def family_of(self, key: str) -> KeyFamily | None:
        """The first family of :data:`LAYOUT` that ``key`` belongs to, if any."""
        return next((family for family in LAYOUT if family.matches(key, self.prefix)), None)


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


LAYOUT: tuple[KeyFamily, ...] = (
    KeyFamily(
        "{prefix}:breaker:peer:*",
        "per-peer breakers (PeerBreakers): one hash per Soulseek peer that failed a job",
        "each expires SLSKD_PEER_IDLE_EXPIRY after its last write",
    ),
    KeyFamily(
        "{prefix}:breaker:*",
        "circuit breakers (RedisBackend): one hash per service",
        "kept: a few fields per service; `reset` keeps the totals",
        persistent=True,
    ),
    KeyFamily(
        "{prefix}:deferred:deferrals_total",
        "deferred index: deferrals counted per service, for metrics",
        "persistent: one counter per service",
        persistent=True,
    ),
    KeyFamily(
        "{prefix}:deferred:*",
        "deferred index: one hash per service, and the set of services",
        "an entry is removed when its message runs or is dead-lettered (an empty hash is gone);"
        " each key expires 8 days after its last deferral",
    ),
    KeyFamily(
        "{prefix}:dead-letter:*",
        "Retries: why a message was dead-lettered",
        "each expires after 7 days, as Dramatiq's dead letters do",
    ),
    KeyFamily(
        "{prefix}:ratelimit:*",
        "shared MusicBrainz rate limiter",
        "expires (PX) the moment its last reserved slot has passed",
    ),
    KeyFamily(
        "{prefix}:jobs:job:*",
        "job records (JobStore): one hash per job",
        "kept while the job runs; expires SOULSPOT_JOB_TTL after it is done or failed",
    ),
    KeyFamily(
        "{prefix}:jobs:all",
        "job index (JobStore): a sorted set of job ids",
        "ids whose record expired are trimmed when jobs finish and when jobs are listed",
        persistent=True,
    ),
    KeyFamily(
        "{prefix}:jobs:unfinished",
        "job store: ids of the jobs not yet done, failed or cancelled, read by the orphan check",
        "an id leaves when its job is done, failed or cancelled",
        persistent=True,
    ),
    KeyFamily(
        "{prefix}:recovery:*",
        "recovery: the marker that Redis kept its data, the orphan check's lease",
        "each expires (PX) unless a live worker renews it",
    ),
    KeyFamily(
        "{prefix}:workers",
        "WorkerPresence: one field per worker process",
        "a stopping worker removes its field; a killed one's is removed by the next beat "
        "15 s later",
        persistent=True,
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
