"""The contract between a :class:`~soulspot_jobs.circuit_breaker.CircuitBreaker` and its store.

Each abstract method is one atomic decision on the shared state of the breaker ``name``.
The two ``*_locally`` hooks let a backend answer the healthy path from process memory; a backend
that returns ``None`` / ``False`` from them is asked through the atomic methods instead.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig
from soulspot_jobs.circuit_breaker.state import BreakerStats, Decision, Transition

#: Seconds during which an unreachable store is not asked again after it failed, so that an
#: outage costs one timeout per interval instead of one per call.
STORE_RETRY_INTERVAL = 1.0


class Backend(ABC):
    """Stores breaker state and makes every state-changing decision atomically."""

    #: True when every method works on process memory only, so async callers need no thread.
    in_memory: bool = False
    #: Seconds an unreachable store is left alone before it is tried again.
    store_retry_interval: float = STORE_RETRY_INTERVAL

    def __init__(self) -> None:
        self._outage_lock = threading.Lock()
        self._in_outage = False
        self._retry_store_at = 0.0
        self._listeners: dict[str, Callable[[Transition], None]] = {}

    def listen(self, name: str, callback: Callable[[Transition], None]) -> None:
        """Have ``callback`` told of transitions of ``name`` that no caller's report returned
        (those caused by successes this backend flushed in a batch)."""
        self._listeners[name] = callback

    def notify(self, name: str, transition: Transition) -> None:
        """Tell ``name``'s listener of ``transition``, if it has one."""
        callback = self._listeners.get(name)
        if callback is not None:
            callback(transition)

    def admit_locally(self, name: str, config: CircuitBreakerConfig) -> Decision | None:
        """Answer "may a call run?" without I/O, or ``None`` when the store must decide."""
        return None

    def admit_from_view(self, name: str, config: CircuitBreakerConfig) -> bool:
        """The healthy path of :meth:`admit_locally`, on its own: ``True`` when an ordinary call
        of a CLOSED breaker (not disabled) was admitted without I/O, and counted; ``False``,
        having counted nothing, otherwise (ask :meth:`admit_locally`)."""
        return False

    def record_success_locally(self, name: str, config: CircuitBreakerConfig) -> bool:
        """Count a success of an ordinary call without I/O; ``False`` when the store must decide."""
        return False

    @abstractmethod
    def admit(self, name: str, config: CircuitBreakerConfig, token: str) -> Decision:
        """Decide atomically whether a call may run; a TRIAL verdict leases a slot to ``token``."""

    @abstractmethod
    def record_success(
        self, name: str, config: CircuitBreakerConfig, token: str | None, *, slow: bool = False
    ) -> Transition | None:
        """Count a success (of the trial ``token``, if any; ``slow``: it took at least
        ``slow_call_duration``); return the transition it caused."""

    @abstractmethod
    def record_failure(
        self,
        name: str,
        config: CircuitBreakerConfig,
        token: str | None,
        hold_open: float | None = None,
        reason: str = "",
        *,
        slow: bool = False,
    ) -> Transition | None:
        """Count a failure; with ``hold_open`` the circuit opens for at least that many seconds.
        A non-empty ``reason`` becomes the breaker's reason (shown while it is not CLOSED)."""

    @abstractmethod
    def release(self, name: str, config: CircuitBreakerConfig, token: str) -> None:
        """Free the trial slot ``token`` without counting an outcome."""

    @abstractmethod
    def reset(self, name: str, config: CircuitBreakerConfig) -> Transition | None:
        """Force the circuit CLOSED; totals are kept."""

    @abstractmethod
    def force_open(
        self, name: str, config: CircuitBreakerConfig, seconds: float, reason: str = ""
    ) -> Transition | None:
        """Force the circuit OPEN for exactly ``seconds`` (maintenance), with ``reason``;
        totals are kept."""

    @abstractmethod
    def set_mode(self, name: str, config: CircuitBreakerConfig, mode: str) -> Transition | None:
        """Set the operator's mode (``normal``, ``disabled``, ``metrics_only``) for every
        process sharing the breaker; returns the transition to CLOSED it caused, if any."""

    @abstractmethod
    def stats(self, name: str, config: CircuitBreakerConfig) -> BreakerStats:
        """A monitoring snapshot of the breaker ``name``."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Stop background threads and write what is buffered; :meth:`reopen` undoes it."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """``with backend:`` closes it at the end of the block."""
        self.close()

    def reopen(self) -> None:  # noqa: B027 - most backends hold nothing to restart
        """Allow background threads again after :meth:`close` (a new worker on the backend)."""

    def begin_outage(self) -> bool:
        """Note that the store failed; True only for the first failure of an episode."""
        with self._outage_lock:
            first, self._in_outage = not self._in_outage, True
            self._retry_store_at = time.monotonic() + self.store_retry_interval
        return first

    def store_suspended(self) -> bool:
        """True while an outage is on and the store was tried less than a retry interval ago."""
        return self._in_outage and time.monotonic() < self._retry_store_at

    def end_outage(self) -> bool:
        """Note that the store answered; True only when this ends an episode of failures."""
        if not self._in_outage:
            return False
        with self._outage_lock:
            ended, self._in_outage = self._in_outage, False
        return ended
