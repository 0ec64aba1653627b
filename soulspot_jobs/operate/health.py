"""The health document: each service's breaker, as ``GET /health`` and ``status --json`` show it.

    {"status": "degraded",
     "services": {"slskd": {"status": "unhealthy", "circuit_breaker": "open", "retry_after": 45,
                            "name": "slskd-api", "deferred": 12},
                  "spotify": {"status": "healthy", "circuit_breaker": "closed", ...}, ...}}

A service is ``healthy`` while its breaker is CLOSED; the whole is ``healthy`` when every service
is. ``retry_after`` (whole seconds, rounded up, at most ``MAX_FORCE_OPEN``: 7 days) is present
only while the breaker is OPEN; ``"forced": true`` only while an operator holds it OPEN
(``soulspot-jobs open``); ``reason`` (why it opened: ``"not logged in to Soulseek"``,
``"unauthorized (check SLSKD_API_KEY)"``, ``"forced open by an operator"``, or the last
failure's own words) only while it is not CLOSED; ``"mode"`` (``"disabled"`` or
``"metrics_only"``, with ``"would_opens"``) only while an operator set one
(``soulspot-jobs mode``). The document is read from Redis, so it is the
same whichever process builds it. ``"local": true`` marks a breaker read from a worker process
standing in for an unreachable store; when no shared state can be read at all and the breakers
fail open, the document says so (``"store"``, every ``circuit_breaker`` ``"local"``, 503).

Any breaker hash renders, whatever an older version or a hand edit left in it: a number that
does not parse counts as 0 and an unknown state as CLOSED (as the breaker's scripts read them),
and an ``open_until`` of ``inf`` or ``1e15`` is an OPEN period whose ``retry_after`` shows as 7
days (``status`` says ``forced indefinitely`` when its end is no date at all) until a reset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from soulspot_jobs.circuit_breaker import (
    MAX_FORCE_OPEN,
    BackendUnavailableError,
    Breakers,
    BreakerStats,
    CircuitState,
)
from soulspot_jobs.circuit_breaker.state import BreakerMode
from soulspot_jobs.deferral.index import DeferredIndex

#: The document's service keys and the breakers they stand for.
SERVICES = {"slskd": "slskd-api", "spotify": "spotify-api", "musicbrainz": "musicbrainz-api"}
#: HTTP status of ``GET /health`` when no breaker is OPEN, and when one is.
HEALTHY_STATUS, UNAVAILABLE_STATUS = 200, 503
#: What the document says while the breakers' store is unreachable and they fail open.
LOCAL_BREAKERS = (
    "the breakers' store is unreachable: each worker process decides with breakers of its own "
    "(same settings) until it is back"
)


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
            entry["retry_after"] = whole_seconds(breaker.retry_after)
        if breaker.forced_until is not None:
            entry["forced"] = True
        if breaker.mode in (BreakerMode.DISABLED, BreakerMode.METRICS_ONLY):
            entry["mode"] = breaker.mode
        if breaker.mode == BreakerMode.METRICS_ONLY:
            entry["would_opens"] = breaker.would_opens
        if breaker.reason:
            entry["reason"] = breaker.reason
        if breaker.local:
            entry["local"] = True
        entry["name"] = name
        entry["deferred"] = deferred.get(name, 0)
        services[key] = entry
    healthy = all(entry["status"] == "healthy" for entry in services.values())
    return {"status": "healthy" if healthy else "degraded", "services": services}


def whole_seconds(seconds: float) -> int:
    """``seconds`` rounded up, within ``[0, MAX_FORCE_OPEN]`` whatever it is (NaN: 0)."""
    if not seconds > 0:
        return 0
    return math.ceil(min(seconds, MAX_FORCE_OPEN))


def read_health(breakers: Breakers, deferred: DeferredIndex) -> dict[str, Any]:
    """The health document as Redis shows it now; while the breakers' store is unreachable and
    they fail open, a document saying so (every breaker ``local``, status 503)."""
    counts = deferred.counts()
    try:
        return health_document(read_stats(breakers), counts)
    except BackendUnavailableError as exc:
        if not fails_open(breakers):
            raise
        return local_breakers_document(counts, str(exc))


def fails_open(breakers: Breakers) -> bool:
    """Whether every service's breaker fails open (decides locally) without its store."""
    return all(breakers[name].config.on_backend_error == "allow" for name in SERVICES.values())


def local_breakers_document(deferred: Mapping[str, int], error: str) -> dict[str, Any]:
    """The health document while no breaker's shared state can be read."""
    services = {
        key: {
            "status": "unknown",
            "circuit_breaker": "local",
            "name": name,
            "deferred": deferred.get(name, 0),
        }
        for key, name in SERVICES.items()
    }
    return {"status": "degraded", "store": LOCAL_BREAKERS, "error": error, "services": services}


def http_status(document: Mapping[str, Any]) -> int:
    """503 while any breaker is OPEN (its jobs cannot run) or only local, else 200."""
    states = {entry["circuit_breaker"] for entry in document["services"].values()}
    return UNAVAILABLE_STATUS if states & {CircuitState.OPEN.value, "local"} else HEALTHY_STATUS
