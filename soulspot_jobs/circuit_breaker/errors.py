"""Errors raised by circuit breakers and their backends."""

from __future__ import annotations

from soulspot_jobs.circuit_breaker.state import CircuitState
from soulspot_jobs.errors import HoldBack, SoulspotJobsError


class CircuitBreakerError(HoldBack):
    """A call was refused because the service's circuit is OPEN (or HALF_OPEN and busy).

    ``retry_after`` is the number of seconds (> 0) after which the caller may try again. Raised
    inside a Dramatiq actor, it holds the message back: the project's Retries defers it for
    ``retry_after`` without spending a retry (it is a :class:`dramatiq.Retry`, see
    :class:`~soulspot_jobs.errors.HoldBack`).
    """

    def __init__(
        self,
        service_name: str,
        retry_after: float,
        state: CircuitState = CircuitState.OPEN,
    ) -> None:
        self.service_name = service_name
        self.state = CircuitState(state)
        super().__init__(
            service_name,
            retry_after,
            f"Circuit breaker {service_name} is {self.state.name}, blocking request. "
            f"Retry after {retry_after:.1f} seconds.",
        )

    def __reduce__(self) -> tuple[type[CircuitBreakerError], tuple[str, float, CircuitState]]:
        return (type(self), (self.service_name, self.retry_after, self.state))


class BackendUnavailableError(SoulspotJobsError):
    """The breaker's shared store could not be reached; raised by backends, handled by breakers."""
