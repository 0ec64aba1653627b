"""Per-peer breakers for Soulseek: one keyed breaker per slskd user name, shared by every worker.

A peer that is offline, refuses or fails transfers is skipped by every worker's jobs for a while,
so a thousand jobs do not each rediscover the same dead peer. Each peer has a
:class:`~.breaker.CircuitBreaker` of its own, with the policy engine and config model of the
service breakers but defaults of its own (:data:`PEER_DEFAULTS`). What differs:

* **Where.** On the service breakers' Redis, under a prefix of their own
  (``<breakers>:peer:<user>``; the service breakers' keys are untouched), through a
  :class:`~.backends.redis.RedisBackend` with ``local_view=False``: a local view refreshes every
  name it touched once a second, which thousands of peers would turn into a flood, while a peer
  is decided once per transfer (seconds), so one round trip per decision is cheap. Without
  Redis, one :class:`~.backends.memory.MemoryBackend` per peer, at most ``max_peers`` of them.
* **Forgetting.** Only peers that failed are remembered: a peer with no breaker is picked, and
  its success reported, with one look and no write. A peer's hash expires ``idle_expiry``
  seconds after its last write (a PEXPIRE right after each), and a reason is cut to
  :data:`MAX_REASON_BYTES`, so a peer costs well under a kilobyte of Redis while it is
  remembered (``bench/peer_memory.py``).
* **Never all.** :meth:`PeerBreakers.screen` reads a search's peers in one round trip and skips
  at most ``max_ejection_percent`` of them (Envoy's ``max_ejection_percent``), never every one:
  the other ejected peers are tried after the healthy ones, least recently ejected first.

A peer is *ejected* while its breaker is OPEN with time left, or HALF_OPEN with every trial slot
taken; a job that picks a HALF_OPEN peer takes its trial slot (:meth:`PeerBreakers.pick`).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import structlog

from soulspot_jobs.circuit_breaker import policy
from soulspot_jobs.circuit_breaker.backends.memory import MemoryBackend
from soulspot_jobs.circuit_breaker.backends.redis import RedisBackend, record_from_hash
from soulspot_jobs.circuit_breaker.breaker import CircuitBreaker, Permit
from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig
from soulspot_jobs.circuit_breaker.errors import CircuitBreakerError
from soulspot_jobs.circuit_breaker.state import BreakerStats, CircuitState

log = structlog.get_logger("soulspot_jobs.circuit_breaker")

T = TypeVar("T")

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
        self._store: _RedisPeers | _MemoryPeers
        if client is not None:
            self._store = _RedisPeers(client, prefix, self.config, idle_expiry, max_peers, clock)
        else:
            self._store = _MemoryPeers(self.config, idle_expiry, max_peers, clock or time.time)

    def statuses(self, usernames: Iterable[str]) -> list[PeerStatus]:
        """Each peer's status now, in one round trip; every peer healthy if Redis fails (the
        peers are a hint, a job never waits for them)."""
        names = list(dict.fromkeys(usernames))
        try:
            stats = self._store.read(names)
        except _Suspended:
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


class _RedisPeers:
    """The peers' breakers in Redis: one backend without local view, a PEXPIRE after each
    write, reads pipelined."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        config: CircuitBreakerConfig,
        idle_expiry: float,
        max_names: int,
        clock: Callable[[], float] | None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.config = config
        self.idle_ms = max(1, round(idle_expiry * 1000))
        self.max_names = max_names
        self.clock = clock
        self._lock = threading.Lock()
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._names: set[str] = set()
        self._backend = self._new_backend()

    def _new_backend(self) -> RedisBackend:
        return RedisBackend(self.client, prefix=self.prefix, clock=self.clock, local_view=False)

    def key(self, username: str) -> str:
        return f"{self.prefix}:{username}"

    def breaker(self, username: str) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(username)
            if breaker is not None:
                self._breakers.move_to_end(username)
                return breaker
            if len(self._names) >= self.max_names:  # bound what the backend keeps per name
                self._backend.close()
                self._backend, self._names = self._new_backend(), set()
                self._breakers.clear()
            self._names.add(username)
            breaker = CircuitBreaker(username, self.config, backend=self._backend)
            self._breakers[username] = breaker
            if len(self._breakers) > BREAKER_CACHE:
                self._breakers.popitem(last=False)
            return breaker

    def known(self, username: str) -> bool:
        """Whether the peer has a breaker in Redis (no when Redis cannot say: fail open)."""
        if self._backend.store_suspended():
            return False
        try:
            return bool(self.client.exists(self.key(username)))
        except redis.RedisError:
            self._backend.begin_outage()
            return False

    def wrote(self, username: str) -> None:
        """Restart the peer's idle period; skipped while the store is known to be away."""
        if self._backend.store_suspended():
            return
        # on an error the breaker has noticed the outage itself; the next write sets the TTL
        with contextlib.suppress(redis.RedisError):
            self.client.pexpire(self.key(username), self.idle_ms)

    def read(self, usernames: Sequence[str]) -> dict[str, BreakerStats]:
        if not usernames:
            return {}
        if self._backend.store_suspended():  # failed moments ago: no timeout per screening
            raise _Suspended
        pipe = self.client.pipeline(transaction=False)
        if self.clock is None:
            pipe.time()
        for name in usernames:
            pipe.hgetall(self.key(name))
        try:
            replies = pipe.execute()
        except redis.RedisError:
            self._backend.begin_outage()
            raise
        now = self._now(replies)
        hashes = replies[1:] if self.clock is None else replies
        return {
            name: policy.stats(record_from_hash(flat), self.config, name, now)
            for name, flat in zip(usernames, hashes, strict=True)
            if flat
        }

    def everyone(self) -> Iterable[dict[str, BreakerStats]]:
        batch: list[str] = []
        start = len(self.prefix) + 1
        for key in self.client.scan_iter(match=f"{self.prefix}:*", count=1000):
            batch.append(_text(key)[start:])
            if len(batch) == CENSUS_BATCH:
                yield self.read(batch)
                batch = []
        if batch:
            yield self.read(batch)

    def close(self) -> None:
        self._backend.close()

    def _now(self, replies: list[Any]) -> float:
        if self.clock is not None:
            return self.clock()
        seconds, microseconds = replies[0]
        return int(seconds) + int(microseconds) / 1_000_000


class _MemoryPeers:
    """The peers' breakers in this process: one MemoryBackend each, the least recently written
    forgotten beyond ``max_peers``, and any idle for ``idle_expiry``."""

    def __init__(
        self,
        config: CircuitBreakerConfig,
        idle_expiry: float,
        max_peers: int,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.idle_expiry = idle_expiry
        self.max_peers = max_peers
        self.clock = clock
        self._lock = threading.Lock()
        #: Username -> (its breaker, clock time of its last write), least recent first.
        self._peers: OrderedDict[str, tuple[CircuitBreaker, float]] = OrderedDict()

    def breaker(self, username: str) -> CircuitBreaker:
        with self._lock:
            self._forget_idle()
            entry = self._peers.get(username)
            if entry is None:
                backend = MemoryBackend(clock=self.clock)
                entry = (CircuitBreaker(username, self.config, backend=backend), self.clock())
                self._peers[username] = entry
            return entry[0]

    def known(self, username: str) -> bool:
        with self._lock:
            self._forget_idle()
            return username in self._peers

    def wrote(self, username: str) -> None:
        with self._lock:
            entry = self._peers.get(username)
            if entry is not None:
                self._peers[username] = (entry[0], self.clock())
                self._peers.move_to_end(username)
            while len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)

    def read(self, usernames: Sequence[str]) -> dict[str, BreakerStats]:
        with self._lock:
            self._forget_idle()
            breakers = {name: self._peers[name][0] for name in usernames if name in self._peers}
        return {name: breaker.stats for name, breaker in breakers.items()}

    def everyone(self) -> Iterable[dict[str, BreakerStats]]:
        with self._lock:
            self._forget_idle()
            names = list(self._peers)
        yield self.read(names)

    def close(self) -> None:
        with self._lock:
            self._peers.clear()

    def _forget_idle(self) -> None:
        """Drop the peers whose last write is ``idle_expiry`` old (the oldest come first)."""
        horizon = self.clock() - self.idle_expiry
        while self._peers:
            _, written = next(iter(self._peers.values()))
            if written > horizon:
                break
            self._peers.popitem(last=False)


class _Suspended(Exception):
    """The store failed moments ago and is not asked again yet (see ``Backend.store_suspended``)."""


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
