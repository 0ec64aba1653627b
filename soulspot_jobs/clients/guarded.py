"""Circuit-breaker wrappers: the same client, every public method behind its service's breaker."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

from soulspot_jobs.circuit_breaker import Backend, CircuitBreaker
from soulspot_jobs.errors import is_service_failure
from soulspot_jobs.settings import Settings


class GuardedClient:
    """Proxy that runs each public method of ``client`` through ``breaker.call_sync``.

    Raises :class:`~soulspot_jobs.circuit_breaker.CircuitBreakerError` while the breaker is
    OPEN; only service failures (:func:`is_service_failure`) count against it, and a service's
    ``Retry-After`` keeps it OPEN at least that long for every worker sharing the backend.
    """

    #: The breaker's name; set by each subclass.
    service: ClassVar[str]

    def __init__(
        self,
        client: Any,
        settings: Settings | None = None,
        *,
        backend: Backend | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if breaker is None:
            config = None
            if settings is not None:
                config = settings.observability.circuit_breaker.config_for(self.service)
            breaker = CircuitBreaker(
                self.service, config, backend=backend, is_failure=is_service_failure
            )
        self.client = client
        self.circuit_breaker = breaker

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if name.startswith("_") or name == "close" or not callable(attribute):
            return attribute
        return self._guard(attribute)

    def _guard(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return self.circuit_breaker.call_sync(method, *args, **kwargs)

        return guarded
