"""Circuit-breaker wrappers: the same client, every public method behind its service's breaker.

A wrapper guards whatever client it is given (the sync clients, their async twins, a
``unittest.mock.MagicMock`` or ``AsyncMock``), deciding per method: a coroutine function goes
through ``await breaker.call(...)``, any other callable through ``breaker.call_sync(...)``.

Which exceptions count as failures of the service: the design's rule, with the caller's own
errors set apart, :func:`~soulspot_jobs.errors.counts_against_service` -- every ``Exception`` the
client raises, except the caller's own errors (:class:`~soulspot_jobs.errors.UpstreamRequestError`:
a 4xx other than 408 and 429, an unavailable Soulseek peer), holds (a busy shared rate limit,
another breaker's refusal) and neutral exceptions. These count nothing (and give a HALF_OPEN trial
slot back). ``is_failure=`` replaces the rule for one wrapper. Both rules, this one and the
stricter one for exceptions escaping an actor (a bug in a job is not an outage), are built on the
one classification of :func:`~soulspot_jobs.errors.classify`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from soulspot_jobs.circuit_breaker import Backend, CircuitBreaker
from soulspot_jobs.errors import ConfigurationError, counts_against_service
from soulspot_jobs.settings import Settings

#: Attributes passed through unguarded: closing a client is not a call to the service.
UNGUARDED = frozenset({"close", "aclose"})
_OWN = frozenset({"client", "circuit_breaker", "_guarded"})


class GuardedClient:
    """Proxy that runs each public method of ``client`` behind ``self.circuit_breaker``.

    Raises :class:`~soulspot_jobs.circuit_breaker.CircuitBreakerError` while the breaker is
    OPEN (the client is not called). The breaker is built from
    ``settings.observability.circuit_breaker.config_for(service)`` (defaults without
    ``settings``) on ``backend`` (default: this process's memory), classifying with
    ``is_failure`` (default :func:`counts_against_service`); or pass a ready ``breaker``, whose
    own classification then applies. A service's ``Retry-After`` carried by its error keeps the
    breaker OPEN at least that long for every worker sharing the backend.
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
        is_failure: Callable[[BaseException], bool] | None = None,
    ) -> None:
        if breaker is None:
            config = None
            if settings is not None:
                config = settings.observability.circuit_breaker.config_for(self.service)
            breaker = CircuitBreaker(
                self.service,
                config,
                backend=backend,
                is_failure=is_failure or counts_against_service,
            )
        elif is_failure is not None:
            raise ConfigurationError(
                f"{type(self).__name__}: pass is_failure or breaker, not both "
                "(a ready breaker keeps its own classification)"
            )
        self.client = client
        self.circuit_breaker = breaker
        #: Guarded methods by name, with the function each one wraps (rebuilt if it changes).
        self._guarded: dict[str, tuple[Any, Callable[..., Any]]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.client!r}, breaker={self.circuit_breaker!r})"

    def __getattr__(self, name: str) -> Any:
        if name in _OWN:
            raise AttributeError(name)  # not set yet (a copy being built): never the client's
        attribute = getattr(self.client, name)
        if name.startswith("_") or name in UNGUARDED or not callable(attribute):
            return attribute
        if inspect.ismethod(attribute) and _class_function(self.client, name) is attribute.__func__:
            # A method of the client's class is the same on every access: kept as an attribute
            # of the wrapper, so later calls skip this lookup.
            guarded = self._guard(attribute)
            self.__dict__[name] = guarded
            return guarded
        # Anything else (a mock's attribute, a function set on the client) is looked up on each
        # access, so that replacing it on the client takes effect; its guard is reused while
        # it stays the same object.
        cached = self._guarded.get(name)
        if cached is None or cached[0] is not attribute:
            cached = (attribute, self._guard(attribute))
            self._guarded[name] = cached
        return cached[1]

    def _guard(self, method: Callable[..., Any]) -> Callable[..., Any]:
        breaker = self.circuit_breaker
        if _is_coroutine_function(method):

            @functools.wraps(method)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                return await breaker.call(method, *args, **kwargs)

            return guarded_async

        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return breaker.call_sync(method, *args, **kwargs)

        return guarded


def _class_function(client: Any, name: str) -> Any:
    return getattr(type(client), name, None)


def _is_coroutine_function(method: Any) -> bool:
    """An ``async def`` function or method, or an ``AsyncMock`` (marked as one)."""
    return inspect.iscoroutinefunction(method) or asyncio.iscoroutinefunction(method)
