"""Per-peer breakers for Soulseek: one keyed breaker per slskd user name, shared by every worker.

A peer that is offline, refuses or fails transfers is skipped by every worker's jobs for a while,
so a thousand jobs do not each rediscover the same dead peer. Each peer has a
:class:`~soulspot_jobs.circuit_breaker.breaker.CircuitBreaker` of its own, with the policy
engine and config model of the service breakers but defaults of its own
(:data:`~.config.PEER_DEFAULTS`). What differs:

* **Where.** On the service breakers' Redis, under a prefix of their own
  (``<breakers>:peer:<user>``; the service breakers' keys are untouched), through a
  :class:`~soulspot_jobs.circuit_breaker.backends.redis.RedisBackend` with ``local_view=False``:
  a local view refreshes every name it touched once a second, which thousands of peers would
  turn into a flood, while a peer is decided once per transfer (seconds), so one round trip per
  decision is cheap. Without Redis, one
  :class:`~soulspot_jobs.circuit_breaker.backends.memory.MemoryBackend` per peer, at most
  ``max_peers`` of them.
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

from soulspot_jobs.circuit_breaker.peers.breakers import PeerBreakers, PeerCensus, Pick
from soulspot_jobs.circuit_breaker.peers.config import (
    MAX_REASON_BYTES,
    PEER_DEFAULTS,
    clip,
    peer_config,
)
from soulspot_jobs.circuit_breaker.peers.screening import PeerStatus, Screening, screen

__all__ = [
    "MAX_REASON_BYTES",
    "PEER_DEFAULTS",
    "PeerBreakers",
    "PeerCensus",
    "PeerStatus",
    "Pick",
    "Screening",
    "clip",
    "peer_config",
    "screen",
]
