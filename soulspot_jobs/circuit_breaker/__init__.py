"""Circuit breakers whose state is shared by every process that uses the same backend.

``CircuitBreaker`` guards calls; ``MemoryBackend`` keeps state in this process, ``RedisBackend``
in Redis for a whole cluster of workers; ``Breakers`` holds one breaker per service of a
deployment, built once and shared by everything that needs one. ``validate_open_duration`` is
the one check of an operator's forced-open period (at most ``MAX_FORCE_OPEN`` seconds).
"""

from soulspot_jobs.circuit_breaker.backends import (
    Backend,
    MemoryBackend,
    RedisBackend,
    backend_from_url,
)
from soulspot_jobs.circuit_breaker.breaker import (
    FORCED_REASON,
    CircuitBreaker,
    Permit,
    circuit_breaker,
    holding,
)
from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig
from soulspot_jobs.circuit_breaker.errors import BackendUnavailableError, CircuitBreakerError
from soulspot_jobs.circuit_breaker.policy import MAX_FORCE_OPEN, validate_open_duration
from soulspot_jobs.circuit_breaker.registry import Breakers
from soulspot_jobs.circuit_breaker.state import BreakerMode, BreakerStats, CircuitState

__all__ = [
    "FORCED_REASON",
    "MAX_FORCE_OPEN",
    "Backend",
    "BackendUnavailableError",
    "BreakerMode",
    "BreakerStats",
    "Breakers",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerError",
    "CircuitState",
    "MemoryBackend",
    "Permit",
    "RedisBackend",
    "backend_from_url",
    "circuit_breaker",
    "holding",
    "validate_open_duration",
]
