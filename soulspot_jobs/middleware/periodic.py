"""A daemon thread that runs one step every few seconds until stopped, logging Redis outages
once per episode instead of once per step."""

from __future__ import annotations

import threading
from collections.abc import Callable

import redis
import structlog

log = structlog.get_logger("soulspot_jobs.recovery")


class Periodic(threading.Thread):
    """Runs ``step()`` every ``interval`` seconds; ``step`` gets whether the previous run failed.

    A :class:`redis.RedisError` is logged once (ERROR) until a step succeeds again (INFO); any
    other exception is logged with its traceback; neither stops the thread.
    """

    def __init__(self, name: str, interval: float, step: Callable[[bool], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self._step = step
        self._stopping = threading.Event()
        self._failing = False

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self._step(self._failing)
            except redis.RedisError as exc:
                if not self._failing:
                    log.error(
                        f"{self.name}: Redis unavailable ({exc}); retrying every {self.interval} s",
                        event_name="recovery.redis_unavailable",
                    )
                self._failing = True
                continue
            except Exception:
                log.exception(f"{self.name}: step failed", event_name="recovery.step_failed")
                continue
            if self._failing:
                log.info(
                    f"{self.name}: Redis available again", event_name="recovery.redis_available"
                )
            self._failing = False
