"""What a circuit-breaker wrapper adds to an awaited client call, on the healthy path.

Usage: ``python -m bench.async_overhead [--calls N]``

Starts its own throwaway ``redis-server`` on loopback, then times, in one event loop:

* an unguarded ``await client.get_track(...)`` on an async client that answers at once (so the
  measurement is the wrapper's own cost, not HTTP);
* the same call through ``CircuitBreakerSpotifyClient`` on ``MemoryBackend``;
* the same call through ``CircuitBreakerSpotifyClient`` on ``RedisBackend`` (local view live),
  with the Redis commands it cost per call (``INFO stats`` delta; the watcher's periodic
  refresh included).

Prints microseconds per call (median of several rounds) twice: wall-clock, and CPU time of the
calling thread (``time.thread_time``: what the call costs, without the time the OS gave to other
processes on a busy machine), with the overhead over the unguarded await in each, and PASS / FAIL
against the target: the Redis backend within 10 µs of the unguarded await (CPU time). A sync
``call_sync`` on ``MemoryBackend`` is timed too, as a reference to compare with
``bench.breaker_overhead`` (it shows how loaded the machine is).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Awaitable, Callable

import redis
import structlog

from soulspot_jobs.circuit_breaker import CircuitBreaker, MemoryBackend, RedisBackend
from soulspot_jobs.clients.spotify import CircuitBreakerSpotifyClient
from soulspot_jobs.embedded.server import EmbeddedRedis

#: Calls timed per round.
DEFAULT_CALLS = 50_000
#: Rounds per variant; the median is reported.
ROUNDS = 5
#: Target: guarded (RedisBackend) minus unguarded, in microseconds per call.
TARGET_OVERHEAD_US = 10.0


class InstantClient:
    """An async client whose call answers at once: the baseline every variant adds to."""

    async def get_track(self, track_id: str, token: str | None = None) -> str:
        return track_id

    def get_track_sync(self, track_id: str, token: str | None = None) -> str:
        return track_id


#: Microseconds per call: (wall-clock, CPU time of the calling thread).
Timing = tuple[float, float]


async def per_call_us(call: Callable[[str], Awaitable[object]], calls: int) -> Timing:
    """Median microseconds per awaited ``call`` over :data:`ROUNDS` rounds of ``calls``."""
    await call("warm-up")
    walls, cpus = [], []
    for _ in range(ROUNDS):
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(calls):
            await call("track")
        cpus.append((time.thread_time() - cpu) / calls * 1e6)
        walls.append((time.perf_counter() - wall) / calls * 1e6)
    return statistics.median(walls), statistics.median(cpus)


def sync_per_call_us(calls: int) -> Timing:
    """:func:`per_call_us` of ``breaker.call_sync`` on MemoryBackend (the reference row)."""
    breaker = CircuitBreaker("reference", backend=MemoryBackend())
    answer = InstantClient().get_track_sync
    walls, cpus = [], []
    for _ in range(ROUNDS):
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(calls):
            breaker.call_sync(answer, "track")
        cpus.append((time.thread_time() - cpu) / calls * 1e6)
        walls.append((time.perf_counter() - wall) / calls * 1e6)
    return statistics.median(walls), statistics.median(cpus)


def commands_processed(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


async def measure(url: str, calls: int) -> dict[str, tuple[Timing, float | None]]:
    """µs per call and Redis commands per call (``None``: no Redis) of each variant."""
    client = InstantClient()
    results: dict[str, tuple[Timing, float | None]] = {}
    results["unguarded await"] = (await per_call_us(client.get_track, calls), None)

    memory = CircuitBreakerSpotifyClient(client, backend=MemoryBackend())
    results["wrapper, MemoryBackend"] = (await per_call_us(memory.get_track, calls), None)

    backend = RedisBackend.from_url(url)
    observer = redis.Redis.from_url(url)
    try:
        guarded = CircuitBreakerSpotifyClient(client, backend=backend)
        await guarded.get_track("first")  # builds the local view
        before = commands_processed(observer)
        micros = await per_call_us(guarded.get_track, calls)
        spent = commands_processed(observer) - before - 1  # less the INFO call itself
        results["wrapper, RedisBackend"] = (micros, spent / (calls * ROUNDS + 1))
    finally:
        backend.close()
        backend.client.close()
        observer.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS)
    calls = parser.parse_args().calls
    logging.getLogger().setLevel(logging.ERROR)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

    with EmbeddedRedis() as server:
        results = asyncio.run(measure(server.url, calls))
    results["reference: sync call_sync, MemoryBackend"] = (sync_per_call_us(calls), None)

    (base_wall, base_cpu), _ = results["unguarded await"]
    print(f"Guarded async call overhead ({calls:,} calls x {ROUNDS} rounds, median round)")
    print()
    print(
        "| Variant | µs per call (wall) | overhead (wall) | µs per call (CPU) "
        "| overhead (CPU) | Redis cmds / call |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, ((wall, cpu), commands) in results.items():
        cmds = "-" if commands is None else f"{commands:.1e}"
        print(
            f"| {name} | {wall:.2f} | {wall - base_wall:.2f} | {cpu:.2f} | {cpu - base_cpu:.2f} "
            f"| {cmds} |"
        )
    print()
    (wall, cpu), _ = results["wrapper, RedisBackend"]
    verdict = "PASS" if cpu - base_cpu <= TARGET_OVERHEAD_US else "FAIL"
    print(
        f"Target: RedisBackend wrapper within {TARGET_OVERHEAD_US:.0f} µs of an unguarded await "
        f"(CPU +{cpu - base_cpu:.2f} µs; wall +{wall - base_wall:.2f} µs) — {verdict}"
    )


if __name__ == "__main__":
    main()
