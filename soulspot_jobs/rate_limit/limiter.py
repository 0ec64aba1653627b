"""Rate limiters that space requests at least ``min_interval`` seconds apart.

A limiter hands out request *slots*: each ``acquire`` reserves the next free one, then sleeps
until it starts. A slot further away than the caller's ``max_wait`` is not reserved; the caller
gets :class:`~soulspot_jobs.errors.RetryLater` instead, so a worker thread is never parked for
long and the job is deferred rather than failed.

:class:`RedisRateLimiter` shares the slots of every worker process on every host (one atomic
Lua script per reservation, timed by the Redis server's clock); :class:`MemoryRateLimiter`
shares them between the threads of one process, for tests and single-process runs.
``acquire_async`` is the same for coroutines: the reservation runs off the event loop (in a
thread, for Redis) and the wait is an ``asyncio.sleep``, so the loop is never blocked.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from importlib import resources

import redis
from redis.commands.core import Script

from soulspot_jobs.errors import ConfigurationError, RetryLater

#: ``RetryLater.reason`` when the next free slot is further away than ``max_wait``.
BUSY_REASON = "shared rate limit busy"
#: ``RetryLater.reason`` when Redis cannot be reached (the limiter fails closed).
UNREACHABLE_REASON = "shared rate limit store unreachable"
#: Seconds a job is deferred when the limiter's Redis cannot be reached.
UNREACHABLE_RETRY_AFTER = 5.0

_scripts: weakref.WeakKeyDictionary[redis.Redis, Script] = weakref.WeakKeyDictionary()
_scripts_lock = threading.Lock()


class RateLimiter(ABC):
    """At most one request per ``min_interval`` seconds among everyone sharing this limiter."""

    def __init__(
        self,
        min_interval: float,
        *,
        service: str,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not min_interval > 0:
            raise ConfigurationError(f"min_interval must be > 0 seconds, got {min_interval!r}")
        self.min_interval = float(min_interval)
        #: The name :class:`RetryLater` carries (the upstream service the limit protects).
        self.service = service
        self._sleep = sleep
        self._async_sleep = async_sleep

    def acquire(self, max_wait: float) -> None:
        """Reserve the next free slot and sleep until it starts.

        Raises :class:`RetryLater` (``retry_after`` = seconds until that slot) without
        reserving anything when the slot is more than ``max_wait`` seconds away.
        """
        wait = self._reserved_wait(self._reserve(_checked(max_wait)))
        if wait > 0:
            self._sleep(wait)

    async def acquire_async(self, max_wait: float) -> None:
        """:meth:`acquire` for coroutines: the reservation runs off the event loop and the wait
        is awaited, so other tasks run meanwhile."""
        reservation = await self._reserve_off_loop(_checked(max_wait))
        wait = self._reserved_wait(reservation)
        if wait > 0:
            await self._async_sleep(wait)

    def _reserved_wait(self, reservation: tuple[bool, float]) -> float:
        """The seconds to wait for a reserved slot; :class:`RetryLater` if none was reserved."""
        reserved, wait = reservation
        if not reserved:
            raise RetryLater(self.service, retry_after=wait, reason=BUSY_REASON)
        return wait

    async def _reserve_off_loop(self, max_wait: float) -> tuple[bool, float]:
        """:meth:`_reserve` without blocking the event loop (a thread, unless it is instant)."""
        return await asyncio.to_thread(self._reserve, max_wait)

    @abstractmethod
    def _reserve(self, max_wait: float) -> tuple[bool, float]:
        """Atomically take the next slot if it starts within ``max_wait`` seconds.

        Returns ``(reserved, wait)``: ``wait`` is the number of seconds until that slot.
        """


class MemoryRateLimiter(RateLimiter):
    """Slots shared by the threads of this process only (behind a lock)."""

    def __init__(
        self,
        min_interval: float,
        *,
        service: str = "rate-limit",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(min_interval, service=service, sleep=sleep, async_sleep=async_sleep)
        self._clock = clock
        self._lock = threading.Lock()
        self._next_free = float("-inf")

    async def _reserve_off_loop(self, max_wait: float) -> tuple[bool, float]:
        return self._reserve(max_wait)  # a lock held for microseconds: no thread needed

    def _reserve(self, max_wait: float) -> tuple[bool, float]:
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_free)
            wait = slot - now
            if wait > max_wait:
                return False, wait
            self._next_free = slot + self.min_interval
            return True, wait


class RedisRateLimiter(RateLimiter):
    """Slots shared by every process and host using the same Redis ``key``.

    One round trip per ``acquire`` (the ``reserve.lua`` script), timed by the Redis server's
    clock so hosts with skewed clocks still agree; ``clock`` replaces it in tests. The key
    expires once its last slot has passed. When Redis cannot be reached the limiter fails
    closed: :class:`RetryLater` with ``UNREACHABLE_RETRY_AFTER``, because requests the
    upstream would count against us are worse than a deferred job.
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        min_interval: float,
        *,
        service: str | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(
            min_interval, service=service or key, sleep=sleep, async_sleep=async_sleep
        )
        self.key = key
        self._clock = clock
        self._script = _reserve_script(client)

    def _reserve(self, max_wait: float) -> tuple[bool, float]:
        now = repr(self._clock()) if self._clock else ""
        try:
            reserved, wait = self._script(
                keys=[self.key], args=[now, repr(self.min_interval), repr(max_wait)]
            )
        except redis.RedisError as exc:
            raise RetryLater(
                self.service, retry_after=UNREACHABLE_RETRY_AFTER, reason=UNREACHABLE_REASON
            ) from exc
        return bool(int(reserved)), float(wait)


def _checked(max_wait: float) -> float:
    if not max_wait >= 0:
        raise ConfigurationError(f"max_wait must be >= 0 seconds, got {max_wait!r}")
    return float(max_wait)


def _reserve_script(client: redis.Redis) -> Script:
    """The ``reserve.lua`` script registered on ``client`` (once per client)."""
    with _scripts_lock:
        script = _scripts.get(client)
        if script is None:
            source = resources.files("soulspot_jobs.rate_limit").joinpath("lua", "reserve.lua")
            script = client.register_script(source.read_text())
            _scripts[client] = script
        return script
