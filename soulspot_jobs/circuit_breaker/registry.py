"""``Breakers``: the breakers of one deployment, one per service, all on one backend.

Built once (by :func:`~soulspot_jobs.broker.build_broker`, from the settings) and handed to
whoever needs a breaker: the Dramatiq middleware, the actors' guarded clients, the health
document and the operators' commands. Every holder of the registry therefore uses the same
:class:`CircuitBreaker` object per service, with the same config and classification.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping

from soulspot_jobs.circuit_breaker.backends.base import Backend
from soulspot_jobs.circuit_breaker.breaker import CircuitBreaker
from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig


class Breakers:
    """One :class:`CircuitBreaker` per service name, built on first use.

    Parameters:
      backend: where every breaker's state lives.
      config_for: the config of a service's breaker (the settings' ``config_for``); default: the
        design's defaults for every service.
      is_failure: which exceptions count as failures of a service (default: the breaker's own
        rule, every ``Exception``).
      services: the services known from the start (listed by :meth:`names` before first use).
      breakers: ready-made breakers by service (a custom classification for one service).
      owns_backend: :meth:`close` closes the backend too; give ``False`` for a backend the
        caller built and closes itself.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        config_for: Callable[[str], CircuitBreakerConfig] | None = None,
        is_failure: Callable[[BaseException], bool] | None = None,
        services: tuple[str, ...] = (),
        breakers: Mapping[str, CircuitBreaker] | None = None,
        owns_backend: bool = False,
    ) -> None:
        self.backend = backend
        self.owns_backend = owns_backend
        self._config_for = config_for or (lambda service: CircuitBreakerConfig())
        self._is_failure = is_failure
        self._services = services
        self._breakers: dict[str, CircuitBreaker] = dict(breakers or {})
        self._lock = threading.Lock()

    def __getitem__(self, service: str) -> CircuitBreaker:
        breaker = self._breakers.get(service)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(service)
                if breaker is None:
                    breaker = CircuitBreaker(
                        service,
                        self._config_for(service),
                        backend=self.backend,
                        is_failure=self._is_failure,
                    )
                    self._breakers[service] = breaker
        return breaker

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return (self[name] for name in self.names())

    def names(self) -> list[str]:
        """The services known from the start, then any other built since, in that order."""
        return [*self._services, *(n for n in self._breakers if n not in self._services)]

    def reopen(self) -> None:
        """Allow the backend's background threads again (a worker boots on it)."""
        if self.owns_backend:
            self.backend.reopen()

    def close(self) -> None:
        """Close the backend when this registry owns it (it was built for it)."""
        if self.owns_backend:
            self.backend.close()
