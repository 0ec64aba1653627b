"""Which of a search's peers a job tries: the ejected ones skipped, within a cap (Envoy's
``max_ejection_percent``), never all. Pure: statuses in, an order out."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from soulspot_jobs.circuit_breaker.state import CircuitState

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """What a peer's breaker says now."""

    username: str
    state: CircuitState
    #: OPEN with time left, or HALF_OPEN with every trial slot taken: skip it if allowed.
    ejected: bool
    #: Seconds until an OPEN peer may be tried again (``None`` unless OPEN).
    retry_after: float | None
    reason: str | None
    #: Backend-clock time of the breaker's last change of state (when an OPEN peer was ejected).
    since: float


@dataclass(frozen=True, slots=True)
class Screening:
    """Which of a search's peers to try, and in which order (see :func:`screen`)."""

    #: The healthy peers as given, then the ejected peers the cap keeps, least recently first.
    order: tuple[str, ...]
    #: Ejected peers kept by the cap: tried after the healthy ones, even while still ejected.
    kept: tuple[PeerStatus, ...]
    #: Ejected peers left out.
    skipped: tuple[PeerStatus, ...]

    def arrange(self, items: Iterable[T], username: Callable[[T], str]) -> list[T]:
        """``items`` (best first) without those of skipped peers: the items of healthy peers in
        their order, then those of the kept ejected peers, peer by peer in :attr:`order`."""
        kept = {status.username: rank for rank, status in enumerate(self.kept)}
        healthy = set(self.order) - set(kept)
        ranked = [
            ((0, 0, index) if name in healthy else (1, kept[name], index), item)
            for index, item in enumerate(items)
            if (name := username(item)) in healthy or name in kept
        ]
        return [item for _, item in sorted(ranked, key=lambda pair: pair[0])]


def screen(statuses: Sequence[PeerStatus], max_ejection_percent: float) -> Screening:
    """Skip the ejected peers among ``statuses`` (a search's peers, each once), but at most
    ``max_ejection_percent`` of them and never all: the most recently ejected are skipped, the
    others are kept and go after the healthy peers, least recently ejected first."""
    ejected = sorted((s for s in statuses if s.ejected), key=lambda s: s.since)
    may_skip = min(math.floor(len(statuses) * max_ejection_percent / 100), len(statuses) - 1)
    keep = max(len(ejected) - max(may_skip, 0), 0)
    kept, skipped = ejected[:keep], ejected[keep:]
    healthy = [s.username for s in statuses if not s.ejected]
    return Screening(
        order=(*healthy, *(s.username for s in kept)), kept=tuple(kept), skipped=tuple(skipped)
    )
