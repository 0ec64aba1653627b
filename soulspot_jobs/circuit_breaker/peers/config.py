"""The peer breakers' defaults and limits, and the config every peer's breaker gets."""

from __future__ import annotations

from typing import Any

from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig

#: The peer breakers' own defaults (``CIRCUIT_BREAKER_SLSKD_PEER__*`` overrides them): a peer is
#: skipped after 3 failures in a row (each within an hour of the previous) for 10 minutes,
#: doubling with each failed trial up to 6 hours; one good transfer brings it back. A trial is a
#: whole transfer, so its slot is leased for 15 minutes.
PEER_DEFAULTS: dict[str, Any] = {
    "failure_threshold": 3,
    "success_threshold": 1,
    "timeout": 600.0,
    "reset_timeout": 3600.0,
    "timeout_multiplier": 2.0,
    "max_timeout": 6 * 3600.0,
    "trial_lease": 900.0,
}
#: Seconds after its last write that a peer's breaker is forgotten (a day).
DEFAULT_IDLE_EXPIRY = 24 * 3600.0
#: Percent of a search's peers that may be skipped because they are ejected.
DEFAULT_MAX_EJECTION_PERCENT = 50.0
#: Peers one process keeps breakers for in memory; on Redis, names one backend object touches
#: before it is replaced (it keeps a little bookkeeping per name it has seen).
MAX_PEERS = 10_000
#: Breaker objects kept per process on Redis (rebuilt cheaply when evicted).
BREAKER_CACHE = 1024
#: Longest reason kept, in bytes: Redis keeps a hash whose values are at most 64 bytes as one
#: compact listpack (ziplist before Redis 7); one longer value turns it into a hash table
#: several times the size.
MAX_REASON_BYTES = 60
#: Key prefix of the peer breakers when none is given.
DEFAULT_PREFIX = "soulspot:breaker:peer"
#: Keys read per pipeline by :meth:`PeerBreakers.census`.
CENSUS_BATCH = 500


def peer_config(**overrides: Any) -> CircuitBreakerConfig:
    """A peer breaker's config: :data:`PEER_DEFAULTS` with ``overrides`` on top."""
    return CircuitBreakerConfig(**{**PEER_DEFAULTS, **overrides})


def clip(reason: str, limit: int = MAX_REASON_BYTES) -> str:
    """``reason`` cut to at most ``limit`` bytes of UTF-8 (ending ``...`` when cut)."""
    data = reason.encode()
    if len(data) <= limit:
        return reason
    return data[: limit - 3].decode(errors="ignore") + "..."
