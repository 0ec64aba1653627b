"""Where the peers' breakers live: on Redis (one backend without local view, a PEXPIRE after
each write, reads pipelined) or, without Redis, in this process's memory (bounded, idle peers
forgotten). :class:`~.breakers.PeerBreakers` talks to either through the same five methods."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis

from soulspot_jobs.circuit_breaker import policy
from soulspot_jobs.circuit_breaker.backends.memory import MemoryBackend
from soulspot_jobs.circuit_breaker.backends.redis import RedisBackend, record_from_hash
from soulspot_jobs.circuit_breaker.breaker import CircuitBreaker
from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig
from soulspot_jobs.circuit_breaker.peers.config import BREAKER_CACHE, CENSUS_BATCH
from soulspot_jobs.circuit_breaker.state import BreakerStats


class RedisPeers:
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
            raise Suspended
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


class MemoryPeers:
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


class Suspended(Exception):
    """The store failed moments ago and is not asked again yet (see ``Backend.store_suspended``)."""


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
