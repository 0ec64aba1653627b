"""``soulspot-jobs demo``: a scripted walk through one shared breaker on a real Redis.

Two workers (two :class:`RedisBackend` instances, as two worker processes would have) guard calls
to a flaky stand-in for slskd with the breaker ``slskd-api``. The walk shows the breaker opening
on one worker and refusing calls on the other, turning HALF_OPEN after its timeout with exactly
one trial admitted cluster-wide, and closing again once the service answers.
"""

from __future__ import annotations

import contextlib
import time

from rich.console import Console
from rich.table import Table

from soulspot_jobs.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    RedisBackend,
)
from soulspot_jobs.logging import redact_url
from soulspot_jobs.redis_server import EmbeddedRedis
from soulspot_jobs.settings import Settings

#: Seconds the demo's breaker stays OPEN (the real default, 60 s, is too long to watch).
DEMO_TIMEOUT = 2.0
#: The breaker the walk uses.
SERVICE = "slskd-api"


class FlakyService:
    """Stands in for slskd: refuses connections while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def search(self, query: str) -> str:
        self.calls += 1
        if self.down:
            raise ConnectionError("slskd refused the connection")
        return f"results for {query!r}"


def run(settings: Settings) -> int:
    """Run the walk on ``settings.redis_url``, or on an embedded Redis when it is unset."""
    console = Console()
    config = settings.observability.circuit_breaker.config_for(SERVICE).model_copy(
        update={"timeout": DEMO_TIMEOUT, "half_open_max_calls": 1}
    )
    with contextlib.ExitStack() as stack:
        url = settings.redis_url or stack.enter_context(EmbeddedRedis()).url
        console.print(f"[bold]Breaker state lives in Redis at {redact_url(url)}[/bold]")
        prefix = f"{settings.key_prefix}:demo:{time.time_ns()}"
        workers = [
            stack.enter_context(contextlib.closing(RedisBackend.from_url(url, prefix=prefix)))
            for _ in range(2)
        ]
        breakers = [CircuitBreaker(SERVICE, config, backend=backend) for backend in workers]
        _walk(console, FlakyService(), breakers, config)
        workers[1].close()  # flushes worker B's locally counted calls into the shared totals
        _show_stats(console, breakers[0])
    return 0


def _attempt(console: Console, worker: str, breaker: CircuitBreaker, service: FlakyService) -> bool:
    """One guarded call; prints what happened and returns True when the call ran."""
    try:
        answer = breaker.call_sync(service.search, "Daft Punk - Around the World")
    except CircuitBreakerError as exc:
        console.print(f"  {worker}: refused, retry after {exc.retry_after:.1f} s")
        return False
    except ConnectionError as exc:
        console.print(f"  {worker}: call failed ({exc})")
        return True
    console.print(f"  {worker}: {answer}")
    return True


def _walk(
    console: Console,
    service: FlakyService,
    breakers: list[CircuitBreaker],
    config: CircuitBreakerConfig,
) -> None:
    worker_a, worker_b = breakers
    console.print("\n[bold]1. slskd goes down; worker A keeps calling it[/bold]")
    service.down = True
    for _ in range(config.failure_threshold):
        _attempt(console, "worker A", worker_a, service)
    console.print(f"  breaker is now {worker_a.state.name} for every worker")

    console.print("\n[bold]2. worker B is refused at once: the breaker is shared[/bold]")
    calls_before = service.calls
    _attempt(console, "worker B", worker_b, service)
    console.print(f"  slskd saw {service.calls - calls_before} call(s) from worker B")

    console.print(
        f"\n[bold]3. slskd recovers; after {config.timeout:.0f} s one trial may run[/bold]"
    )
    service.down = False
    time.sleep(worker_a.stats.retry_after or 0.0)
    trial = worker_a.acquire_sync()
    console.print(f"  worker A holds the trial slot (breaker {worker_a.state.name})")
    _attempt(console, "worker B", worker_b, service)
    worker_a.record_success_sync(trial)
    console.print("  worker A: trial succeeded")

    console.print(f"\n[bold]4. {config.success_threshold} successful trials close it[/bold]")
    for _ in range(config.success_threshold - 1):
        _attempt(console, "worker A", worker_a, service)
    console.print(f"  breaker is {worker_a.state.name}")
    _attempt(console, "worker B", worker_b, service)


def _show_stats(console: Console, breaker: CircuitBreaker) -> None:
    stats = breaker.stats
    table = Table(title=f"Breaker {stats.name} (shared by both workers)")
    for column in ("state", "requests", "successes", "failures", "rejections"):
        table.add_column(column)
    table.add_row(
        stats.state.name,
        str(stats.total_requests),
        str(stats.total_successes),
        str(stats.total_failures),
        str(stats.total_rejections),
    )
    console.print(table)
