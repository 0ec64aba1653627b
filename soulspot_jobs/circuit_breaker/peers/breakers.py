"""``PeerBreakers``: one breaker per Soulseek peer, picked and reported by the download jobs
(see the package's docstring)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from soulspot_jobs.circuit_breaker.breaker import CircuitBreaker, Permit
from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig
from soulspot_jobs.circuit_breaker.errors import CircuitBreakerError
from soulspot_jobs.circuit_breaker.peers.config import (
    DEFAULT_IDLE_EXPIRY,
    DEFAULT_MAX_EJECTION_PERCENT,
    DEFAULT_PREFIX,
    MAX_PEERS,
    clip,
    peer_config,
)
from soulspot_jobs.circuit_breaker.peers.screening import PeerStatus, Screening, screen
from soulspot_jobs.circuit_breaker.peers.stores import MemoryPeers, RedisPeers, Suspended
from soulspot_jobs.circuit_breaker.state import BreakerStats, CircuitState

log = structlog.get_logger("soulspot_jobs.circuit_breaker")


@dataclass(frozen=True, slots=True)
class Pick:
    """A job's use of one peer, from :meth:`PeerBreakers.pick` to the outcome it reports.

    Plain data, so that a job can keep it in its record between steps (:meth:`to_json`).
    """

    username: str
    #: The HALF_OPEN trial slot this use holds, if it is a trial.
    token: str | None = None
    #: Tried although ejected (the cap kept it): a success closes the peer's breaker.
    forced: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "forced": self.forced}

    @classmethod
    def from_json(cls, username: str, data: dict[str, Any] | None) -> Pick:
        data = data or {}
        return cls(username, data.get("token"), bool(data.get("forced", False)))


@dataclass(frozen=True, slots=True)
class PeerCensus:
    """The peers remembered now, and how many of them are ejected."""

    tracked: int
    ejected: int


class PeerBreakers:
    """One breaker per peer, on Redis (``client``) or, without one, in this process's memory.

    Parameters (keyword-only): ``config`` (default :func:`peer_config`); ``client`` and
    ``prefix`` (keys ``<prefix>:<user>``); ``idle_expiry`` (seconds a peer is remembered after
    its last write); ``max_ejection_percent`` (see :func:`screen`); ``max_peers`` (see
    :data:`MAX_PEERS`); ``clock`` (epoch seconds, for tests; default: the Redis server's clock,
    or ``time.time`` in memory).
    """

    def __init__(
        self,
        *,
        config: CircuitBreakerConfig | None = None,
        client: redis.Redis | None = None,
        prefix: str = DEFAULT_PREFIX,
        idle_expiry: float = DEFAULT_IDLE_EXPIRY,
        max_ejection_percent: float = DEFAULT_MAX_EJECTION_PERCENT,
        max_peers: int = MAX_PEERS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config if config is not None else peer_config()
        self.max_ejection_percent = max_ejection_percent
        self.idle_expiry = idle_expiry
        self._store: RedisPeers | MemoryPeers
        if client is not None:
            self._store = RedisPeers(client, prefix, self.config, idle_expiry, max_peers, clock)
        else:
            self._store = MemoryPeers(self.config, idle_expiry, max_peers, clock or time.time)

    def statuses(self, usernames: Iterable[str]) -> list[PeerStatus]:
        """Each peer's status now, in one round trip; every peer healthy if Redis fails (the
        peers are a hint, a job never waits for them)."""
        names = list(dict.fromkeys(usernames))
        try:
            stats = self._store.read(names)
        except Suspended:
            stats = {}
        except redis.RedisError as exc:
            log.warning(
                f"slskd peers unreadable, none skipped: {exc}", event_name="slskd.peers_unreadable"
            )
            stats = {}
        return [
            _status(name, stats[name], self.config)
            if name in stats
            else PeerStatus(name, CircuitState.CLOSED, False, None, None, 0.0)
            for name in names
        ]

    def screen(self, usernames: Iterable[str]) -> Screening:
        """Which of a search's peers to try, and in which order (:func:`screen`)."""
        return screen(self.statuses(usernames), self.max_ejection_percent)

    def pick(self, username: str, *, forced: bool = False) -> Pick | None:
        """Take ``username`` for one transfer: ``None`` when its breaker refuses (ejected since
        the search was screened), unless ``forced`` (the cap kept it), which goes ahead
        anyway. A HALF_OPEN peer's pick holds a trial slot; report how it went with
        :meth:`succeeded`, :meth:`failed` or :meth:`released`. A peer with no breaker yet (it
        never failed, or was forgotten) is picked with one look and nothing written: only the
        peers that failed are remembered."""
        if not self._store.known(username):
            return Pick(username)
        breaker = self._store.breaker(username)
        with structlog.contextvars.bound_contextvars(slskd_peer=username):
            try:
                permit = breaker.acquire_sync()
            except CircuitBreakerError:
                self._store.wrote(username)
                return Pick(username, None, forced=True) if forced else None
        self._store.wrote(username)
        return Pick(username, permit.token)

    def succeeded(self, pick: Pick) -> None:
        """The transfer succeeded: a trial counts towards closing; a forced pick (ejected, yet
        it worked) closes the breaker at once; a peer with no breaker needs nothing written."""
        plain = pick.token is None and not pick.forced
        if plain and not self._store.known(pick.username):
            return
        breaker = self._store.breaker(pick.username)
        with structlog.contextvars.bound_contextvars(slskd_peer=pick.username):
            if pick.forced:
                breaker.reset_sync()
            else:
                breaker.record_success_sync(Permit(pick.token, False))
        self._store.wrote(pick.username)

    def failed(self, pick: Pick, reason: str) -> float | None:
        """The peer failed the transfer for ``reason`` (cut to :data:`MAX_REASON_BYTES`).
        Returns the seconds it is now ejected for, when this failure ejected it (logged
        ``slskd.peer_ejected``)."""
        reason = clip(reason)
        breaker = self._store.breaker(pick.username)
        with structlog.contextvars.bound_contextvars(slskd_peer=pick.username):
            transition = breaker.record_failure_sync(Permit(pick.token, False), reason=reason)
        self._store.wrote(pick.username)
        if transition is None or transition.to_state is not CircuitState.OPEN:
            return None
        if getattr(transition, "would", False):  # metrics_only: it only would have
            return None
        log.warning(
            f"slskd peer {pick.username} skipped for {transition.open_for:.0f} s: {reason}",
            event_name="slskd.peer_ejected",
            slskd_peer=pick.username,
            retry_after=round(transition.open_for, 3),
            reason=reason,
        )
        return transition.open_for

    def released(self, pick: Pick) -> None:
        """The transfer ended for a reason that is not the peer's (slskd's own failure, a
        cancellation): a trial slot is given back, nothing is counted."""
        if pick.token is None:
            return
        breaker = self._store.breaker(pick.username)
        with structlog.contextvars.bound_contextvars(slskd_peer=pick.username):
            breaker.release_sync(Permit(pick.token, False))
        self._store.wrote(pick.username)

    def stats(self, username: str) -> BreakerStats:
        """The full statistics of one peer's breaker (a fresh one's for a peer not remembered)."""
        if not self._store.known(username):
            return CircuitBreaker(username, self.config).stats
        return self._store.breaker(username).stats

    def census(self) -> PeerCensus:
        """How many peers are remembered, and how many of them are ejected now (on Redis, a
        SCAN of the peer keys: for ``status``, not for jobs)."""
        tracked = ejected = 0
        for batch in self._store.everyone():
            tracked += len(batch)
            ejected += sum(_status(n, s, self.config).ejected for n, s in batch.items())
        return PeerCensus(tracked, ejected)

    def close(self) -> None:
        self._store.close()


def _status(name: str, stats: BreakerStats, config: CircuitBreakerConfig) -> PeerStatus:
    busy = (
        stats.state is CircuitState.HALF_OPEN
        and stats.trials_in_flight >= config.half_open_max_calls
    )
    return PeerStatus(
        username=name,
        state=stats.state,
        ejected=stats.state is CircuitState.OPEN or busy,
        retry_after=stats.retry_after,
        reason=stats.reason,
        since=stats.last_state_change,
    )
