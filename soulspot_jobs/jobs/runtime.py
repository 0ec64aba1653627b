"""What the actors need at run time: settings, job records and the guarded upstream clients.

One runtime per worker process. Clients are built on first use (after Dramatiq forked the
process) and guarded by the deployment's breakers (the broker's ``breakers``), the very ones the
middleware admits messages through, so a client guarded by its actor's own service recognises
the permit the message already holds. The per-peer breakers of Soulseek (``peers``) live on the
same store as those breakers: their Redis, or this process's memory when they have none.
"""

from __future__ import annotations

import threading
from functools import cached_property

import redis

from soulspot_jobs.circuit_breaker import Breakers, RedisBackend
from soulspot_jobs.circuit_breaker.peers import PeerBreakers
from soulspot_jobs.clients.musicbrainz import (
    CircuitBreakerMusicBrainzClient,
    MusicBrainzClient,
    shared_rate_limiter,
)
from soulspot_jobs.clients.slskd import CircuitBreakerSlskdClient, SlskdClient
from soulspot_jobs.clients.spotify import CircuitBreakerSpotifyClient, SpotifyClient
from soulspot_jobs.jobs.records import JobStore
from soulspot_jobs.keys import Keys
from soulspot_jobs.settings import Settings


class Runtime:
    """Settings, the job store and lazily built clients, shared by every actor of a broker."""

    def __init__(
        self, settings: Settings, client: redis.Redis, keys: Keys, breakers: Breakers
    ) -> None:
        self.settings = settings
        self.redis = client
        self.keys = keys
        self.breakers = breakers
        self.store = JobStore(client, keys, ttl=settings.job_ttl)
        self._lock = threading.Lock()

    @cached_property
    def slskd(self) -> CircuitBreakerSlskdClient:
        with self._lock:
            return CircuitBreakerSlskdClient(
                SlskdClient(self.settings.slskd),
                breaker=self.breakers[CircuitBreakerSlskdClient.service],
            )

    @cached_property
    def peers(self) -> PeerBreakers:
        """One breaker per slskd peer, on the service breakers' Redis (else in memory)."""
        backend = self.breakers.backend
        client = backend.client if isinstance(backend, RedisBackend) else None
        slskd = self.settings.slskd
        with self._lock:
            return PeerBreakers(
                config=self.settings.observability.circuit_breaker.peer_config(),
                client=client,
                prefix=self.keys.peer_breakers,
                idle_expiry=slskd.peer_idle_expiry,
                max_ejection_percent=slskd.peer_max_ejection_percent,
            )

    @cached_property
    def musicbrainz(self) -> CircuitBreakerMusicBrainzClient:
        settings = self.settings.musicbrainz
        key = self.keys.rate_limit("musicbrainz")
        limiter = shared_rate_limiter(self.redis, settings, key=key)
        with self._lock:
            return CircuitBreakerMusicBrainzClient(
                MusicBrainzClient(settings, limiter=limiter),
                breaker=self.breakers[CircuitBreakerMusicBrainzClient.service],
            )

    @cached_property
    def spotify(self) -> CircuitBreakerSpotifyClient:
        with self._lock:
            return CircuitBreakerSpotifyClient(
                SpotifyClient(self.settings.spotify),
                breaker=self.breakers[CircuitBreakerSpotifyClient.service],
            )

    def close(self) -> None:
        for name in ("slskd", "musicbrainz", "spotify"):
            client = self.__dict__.pop(name, None)
            if client is not None:
                client.client.close()
        peers = self.__dict__.pop("peers", None)
        if peers is not None:
            peers.close()
