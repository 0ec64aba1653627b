"""Breaker state in process memory, behind one lock: for single-process use and for tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from soulspot_jobs.circuit_breaker import policy
from soulspot_jobs.circuit_breaker.backends.base import Backend
from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig
from soulspot_jobs.circuit_breaker.state import (
    ADMITTED_DISABLED,
    ADMITTED_LOCALLY,
    BreakerRecord,
    BreakerStats,
    CircuitState,
    Decision,
    Transition,
    Verdict,
)


class MemoryBackend(Backend):
    """Process-local, thread-safe breaker state.

    The lock is held only while a decision is made, never while the guarded function runs, so
    threads calling a CLOSED breaker run in parallel.
    """

    in_memory = True

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        #: Seconds since the epoch; injectable so that tests can move time.
        self.clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, BreakerRecord] = {}

    def _record(self, name: str) -> BreakerRecord:
        record = self._records.get(name)
        if record is None:
            record = self._records.setdefault(name, BreakerRecord())
        return record

    def admit_from_view(self, name: str, config: CircuitBreakerConfig) -> bool:
        with self._lock:
            record = self._record(name)
            if record.state is not CircuitState.CLOSED or record.mode == policy.DISABLED:
                return False
            record.total_requests += 1
            return True

    def admit_locally(self, name: str, config: CircuitBreakerConfig) -> Decision | None:
        if self.admit_from_view(name, config):
            return ADMITTED_LOCALLY
        with self._lock:
            record = self._record(name)
            if record.mode == policy.DISABLED:
                return ADMITTED_DISABLED
            if record.state is CircuitState.CLOSED:  # closed since ``admit_from_view`` looked
                return None
            now = self.clock()
            if record.state is CircuitState.OPEN and now < record.open_until:
                record.total_requests += 1
                record.total_rejections += 1
                retry_after = policy.positive(record.open_until - now)
                return Decision(Verdict.REJECTED, CircuitState.OPEN, retry_after)
        return None

    def record_success_locally(self, name: str, config: CircuitBreakerConfig) -> bool:
        if config.windowed:  # the window needs the outcome, and it costs no I/O here
            return False
        with self._lock:
            record = self._record(name)
            if record.state is CircuitState.CLOSED and not record.failure_count:
                record.total_successes += 1
                return True
        return False

    def admit(self, name: str, config: CircuitBreakerConfig, token: str) -> Decision:
        with self._lock:
            return policy.admit(self._record(name), config, self.clock(), token)

    def record_success(
        self, name: str, config: CircuitBreakerConfig, token: str | None, *, slow: bool = False
    ) -> Transition | None:
        with self._lock:
            record = self._record(name)
            return policy.record_success(record, config, self.clock(), token, slow=slow)

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
        with self._lock:
            record, now = self._record(name), self.clock()
            return policy.record_failure(record, config, now, token, hold_open, reason, slow=slow)

    def set_mode(self, name: str, config: CircuitBreakerConfig, mode: str) -> Transition | None:
        with self._lock:
            return policy.set_mode(self._record(name), self.clock(), mode)

    def release(self, name: str, config: CircuitBreakerConfig, token: str) -> None:
        with self._lock:
            policy.release(self._record(name), self.clock(), token)

    def reset(self, name: str, config: CircuitBreakerConfig) -> Transition | None:
        with self._lock:
            return policy.reset(self._record(name), self.clock())

    def force_open(
        self, name: str, config: CircuitBreakerConfig, seconds: float, reason: str = ""
    ) -> Transition | None:
        with self._lock:
            return policy.force_open(self._record(name), self.clock(), seconds, reason)

    def stats(self, name: str, config: CircuitBreakerConfig) -> BreakerStats:
        with self._lock:
            record, now = self._record(name), self.clock()
            policy.expire_trials(record, now)  # like the Redis snapshot: a look frees dead slots
            return policy.stats(record, config, name, now)
