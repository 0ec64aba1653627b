"""``soulspot-jobs status``, ``reset SERVICE``, ``open SERVICE [--for SECONDS]`` and
``mode SERVICE MODE``.

``reset`` and ``open`` change the breaker in Redis with one atomic script that also publishes
the change, so every worker's local view follows at once; both are logged
(``circuit_breaker.reset``, ``circuit_breaker.forced_open``). ``open --for`` takes a finite
number of seconds, more than 0 and at most ``MAX_FORCE_OPEN`` (7 days); anything else exits 2.

``mode`` sets an operator's mode for every worker (they follow within a second): ``normal``,
``disabled`` (admit every job, count nothing), ``metrics_only`` (count, log the openings it
would make, never defer), ``forced_open`` (as ``open``, with ``--for``).

``status`` shows whatever the breaker hashes hold (see :mod:`soulspot_jobs.operate.health`): a
forced period whose end is no date (an older version's ``inf``) is ``forced indefinitely``.
"""

from __future__ import annotations

import time
from typing import Any

import redis
import typer

from soulspot_jobs.circuit_breaker import BackendUnavailableError, validate_open_duration
from soulspot_jobs.circuit_breaker.peers import PeerCensus
from soulspot_jobs.circuit_breaker.state import BreakerMode
from soulspot_jobs.operate.commands.common import (
    JSON_OPTION,
    connected,
    fail,
    print_json,
    print_table,
    service_name,
    utc,
)
from soulspot_jobs.operate.health import (
    LOCAL_BREAKERS,
    SERVICES,
    fails_open,
    health_document,
    local_breakers_document,
    read_stats,
)

#: Seconds a breaker stays forced OPEN when ``open`` is given no ``--for``.
DEFAULT_OPEN_SECONDS = 3600.0

SERVICE_ARGUMENT = typer.Argument(..., help="slskd, spotify or musicbrainz (or slskd-api, ...).")


def status(as_json: bool = JSON_OPTION) -> None:
    """Each service's breaker: state, failures, retry_after, totals and deferred jobs; then,
    for each breaker that is not CLOSED, why (``slskd: not logged in to Soulseek``); then how
    many slskd peers are skipped now (their own breakers, :mod:`.circuit_breaker.peers`).

    --json prints the health document that GET /health serves.
    """
    with connected() as jobs:
        deferred = jobs.deferred.counts()
        peers = _peer_census(jobs)
        try:
            stats = read_stats(jobs.breakers)
        except BackendUnavailableError as exc:
            if not fails_open(jobs.breakers):
                raise
            document = local_breakers_document(deferred, str(exc))
            if as_json:
                print_json(document)
            else:
                typer.echo(f"breakers: {LOCAL_BREAKERS} ({exc})")
                typer.echo(f"overall: {document['status']}")
            return
    document = health_document(stats, deferred)
    if as_json:
        print_json(document)
        return
    rows = []
    for key, name in SERVICES.items():
        s = stats[name]
        state = s.state.value
        if s.forced_until is not None:
            until = utc(s.forced_until)
            state += f" (forced until {until})" if until else " (forced indefinitely)"
        retry_after = f"{s.retry_after:.1f}s" if s.retry_after is not None else None
        rows.append(
            [
                key,
                name,
                state,
                s.failure_count,
                retry_after,
                s.total_requests,
                s.total_successes,
                s.total_failures,
                s.total_rejections,
                deferred.get(name, 0),
            ]
        )
    headers = [
        "service",
        "breaker",
        "state",
        "failures",
        "retry_after",
        "requests",
        "successes",
        "failures_total",
        "rejections",
        "deferred",
    ]
    print_table(headers, rows)
    for key, name in SERVICES.items():
        if stats[name].reason:
            typer.echo(f"{key}: {stats[name].reason}")
        if stats[name].mode not in (BreakerMode.NORMAL, BreakerMode.FORCED_OPEN):
            typer.echo(f"{key}: mode {describe_mode(stats[name])}")
    if peers is not None:
        typer.echo(f"slskd peers: {peers.ejected} skipped now, of {peers.tracked} remembered")
    typer.echo(f"overall: {document['status']}")


def _peer_census(jobs: Any) -> PeerCensus | None:
    """The slskd peers remembered and ejected now (``None`` when their store cannot say)."""
    try:
        return jobs.runtime.peers.census()
    except (redis.RedisError, BackendUnavailableError):
        return None


def describe_mode(stats: object) -> str:
    """``metrics_only (would have opened 2 times)`` or just the mode's name."""
    mode = getattr(stats, "mode", BreakerMode.NORMAL.value)
    if mode == BreakerMode.METRICS_ONLY:
        return f"{mode} (would have opened {getattr(stats, 'would_opens', 0)} times)"
    return str(mode)


def mode(
    service: str = SERVICE_ARGUMENT,
    new_mode: str = typer.Argument(
        ..., metavar="MODE", help="normal, disabled, metrics_only or forced_open (with --for)."
    ),
    seconds: float = typer.Option(
        DEFAULT_OPEN_SECONDS, "--for", help="forced_open only: seconds to keep it OPEN."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Set a service's breaker mode for every worker (each follows within a second).

    normal: count and defer as configured. disabled: run every job, count nothing.
    metrics_only: count, and log the openings it would make, but never defer a job.
    forced_open: defer every job for --for seconds (as `open`).
    """
    name = service_name(service)
    if new_mode not in {m.value for m in BreakerMode}:
        fail(f"unknown breaker mode {new_mode!r}: use one of {', '.join(BreakerMode)}")
    if new_mode == BreakerMode.FORCED_OPEN:
        try:
            validate_open_duration(seconds)
        except ValueError as exc:
            fail(f"--for: {exc}")
    with connected() as jobs:
        breaker = jobs.breakers[name]
        breaker.set_mode_sync(new_mode, seconds=seconds)
        stats = breaker.stats
    if as_json:
        print_json({"service": name, "mode": stats.mode, "state": stats.state.value})
    else:
        typer.echo(f"Circuit breaker {name} is in mode {stats.mode} ({stats.state.value}).")


def reset(service: str = SERVICE_ARGUMENT, as_json: bool = JSON_OPTION) -> None:
    """Force a service's breaker CLOSED, cluster-wide (totals are kept)."""
    name = service_name(service)
    with connected() as jobs:
        breaker = jobs.breakers[name]
        breaker.reset_sync()
        state = breaker.stats.state.value
    if as_json:
        print_json({"service": name, "state": state})
    else:
        typer.echo(f"Circuit breaker {name} is {state.upper()}.")


def force_open(
    service: str = SERVICE_ARGUMENT,
    seconds: float = typer.Option(
        DEFAULT_OPEN_SECONDS,
        "--for",
        help=(
            "Seconds to keep it OPEN (more than 0, at most 604800: 7 days); then it turns "
            "HALF_OPEN and tries the service."
        ),
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Force a service's breaker OPEN for maintenance, cluster-wide: its jobs are deferred.

    `soulspot-jobs reset SERVICE` ends it early; a longer maintenance than 7 days is renewed.
    """
    name = service_name(service)
    try:
        validate_open_duration(seconds)
    except ValueError as exc:
        fail(f"--for: {exc}")
    with connected() as jobs:
        breaker = jobs.breakers[name]
        breaker.force_open_sync(seconds)
        stats = breaker.stats
    until = stats.forced_until or time.time() + seconds
    if as_json:
        print_json({"service": name, "state": stats.state.value, "forced_until": until})
    else:
        typer.echo(f"Circuit breaker {name} is OPEN until {utc(until)} ({seconds:g} s).")
