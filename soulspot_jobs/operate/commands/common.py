"""What every operator command shares: connecting, failing with one line, printing tables."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn

import redis
import typer

from soulspot_jobs.circuit_breaker import BackendUnavailableError
from soulspot_jobs.embedded.connection import (
    RedisUnavailable,
    creates_data_dir,
    redis_for,
    redis_in_use,
)
from soulspot_jobs.logging import configure_logging
from soulspot_jobs.operate.health import SERVICES
from soulspot_jobs.settings import SettingsError, load_settings

#: Exit status of a command refused because of a bad setting or argument.
EXIT_BAD_INPUT = 2
#: Exit status when Redis cannot be reached (or failed during the command).
EXIT_UNAVAILABLE = 1
#: Exit status when what the command names does not exist.
EXIT_NOT_FOUND = 1

JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of text.")


def fail(message: str, status: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``status``; no traceback."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(status)


@contextmanager
def connected() -> Iterator[Any]:
    """A :class:`~soulspot_jobs.jobs.app.SoulspotJobs` on the configured Redis, closed afterwards.

    A bad setting exits with 2; an unreachable Redis, or Redis failing mid-command, with 1.
    Once connected it prints on stderr which Redis it uses (``using Redis at ...``, ``using
    embedded Redis in ...``, saying when that data directory was created just now), so stdout
    stays the command's own (``--json`` included).
    """
    from soulspot_jobs.deferral.dead_letters import DeadLettersUnsupported
    from soulspot_jobs.jobs.app import SoulspotJobs

    try:
        settings = load_settings()
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    configure_logging(settings)
    created = creates_data_dir(settings)
    try:
        with redis_for(settings) as url:
            typer.echo(redis_in_use(settings, created=created), err=True)
            # the broker follows BROKER_URL when set (RabbitMQ), else this Redis
            jobs = SoulspotJobs(settings.model_copy(update={"redis_url": url}))
            try:
                yield jobs
            finally:
                jobs.close()
    except RedisUnavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except DeadLettersUnsupported as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except (redis.RedisError, BackendUnavailableError) as exc:
        fail(f"Redis failed: {exc}", EXIT_UNAVAILABLE)


def service_name(name: str) -> str:
    """The breaker name of ``name`` (``slskd`` or ``slskd-api``); exits with 2 when unknown."""
    if name in SERVICES.values():
        return name
    if name in SERVICES:
        return SERVICES[name]
    known = ", ".join(f"{key} ({value})" for key, value in SERVICES.items())
    fail(f"unknown service {name!r}: use one of {known}")


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns left-aligned, two spaces apart; ``-`` for empty cells."""
    cells = [[str(h) for h in headers]] + [
        ["-" if value is None or value == "" else str(value) for value in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def utc(epoch_seconds: float | None) -> str | None:
    """``2026-05-01T12:00:00Z`` for an epoch time in seconds; None for None or 0, and for a time
    no date can show (infinite, NaN, past the year 9999: a stored value no operation writes)."""
    if not epoch_seconds:
        return None
    try:
        return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return None
