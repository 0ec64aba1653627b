"""The health document: each service's breaker, as ``GET /health`` and ``status --json`` show it.

    {"status": "degraded",
     "services": {"slskd": {"status": "unhealthy", "circuit_breaker": "open", "retry_after": 45,
                            "name": "slskd-api", "deferred": 12},
                  "spotify": {"status": "healthy", "circuit_breaker": "closed", ...}, ...}}

A service is ``healthy`` while its breaker is CLOSED; the whole is ``healthy`` when every service
is. ``retry_after`` (whole seconds, rounded up) is present only while the breaker is OPEN;
``reason`` (why it opened: ``"not logged in to Soulseek"``, ``"unauthorized (check
SLSKD_API_KEY)"``, ``"forced open by an operator"``, or the last failure's own words) only while
it is not CLOSED. The document is read from Redis, so it is the same whichever process builds
it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from soulspot_jobs.circuit_breaker import Breakers, BreakerStats, CircuitState
from soulspot_jobs.deferral.index import DeferredIndex

#: The document's service keys and the breakers they stand for.
SERVICES = {"slskd": "slskd-api", "spotify": "spotify-api", "musicbrainz": "musicbrainz-api"}
#: HTTP status of ``GET /health`` when no breaker is OPEN, and when one is.
HEALTHY_STATUS, UNAVAILABLE_STATUS = 200, 503


def read_stats(breakers: Breakers) -> dict[str, BreakerStats]:
    """Every service's breaker statistics, keyed by breaker name (one round trip each)."""
    return {name: breakers[name].stats for name in SERVICES.values()}


def health_document(
    stats: Mapping[str, BreakerStats], deferred: Mapping[str, int]
) -> dict[str, Any]:
    """The document from the breakers' ``stats`` and the deferred counts, both by breaker name."""
    services = {}
    for key, name in SERVICES.items():
        breaker = stats[name]
        entry: dict[str, Any] = {
            "status": "healthy" if breaker.state is CircuitState.CLOSED else "unhealthy",
            "circuit_breaker": breaker.state.value,
        }
        if breaker.state is CircuitState.OPEN and breaker.retry_after is not None:
            entry["retry_after"] = math.ceil(breaker.retry_after)
        if breaker.reason:
            entry["reason"] = breaker.reason
        entry["name"] = name
        entry["deferred"] = deferred.get(name, 0)
        services[key] = entry
    healthy = all(entry["status"] == "healthy" for entry in services.values())
    return {"status": "healthy" if healthy else "degraded", "services": services}


def read_health(breakers: Breakers, deferred: DeferredIndex) -> dict[str, Any]:
    """The health document as Redis shows it now."""
    return health_document(read_stats(breakers), deferred.counts())


def http_status(document: Mapping[str, Any]) -> int:
    """503 while any breaker is OPEN (its jobs cannot run), else 200."""
    states = (entry["circuit_breaker"] for entry in document["services"].values())
    return UNAVAILABLE_STATUS if CircuitState.OPEN.value in states else HEALTHY_STATUS
