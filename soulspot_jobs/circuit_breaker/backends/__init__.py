"""Where breaker state lives: process memory or Redis."""

from soulspot_jobs.circuit_breaker.backends.base import Backend
from soulspot_jobs.circuit_breaker.backends.memory import MemoryBackend
from soulspot_jobs.circuit_breaker.backends.redis import RedisBackend

__all__ = ["Backend", "MemoryBackend", "RedisBackend", "backend_from_url"]


def backend_from_url(url: str, **options: object) -> Backend:
    """``memory://`` gives a :class:`MemoryBackend`; ``redis://``, ``rediss://`` and ``unix://``
    give a :class:`RedisBackend` on that server."""
    if url.startswith("memory://"):
        return MemoryBackend(**options)  # type: ignore[arg-type]
    return RedisBackend.from_url(url, **options)  # type: ignore[arg-type]
