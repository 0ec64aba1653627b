"""``soulspot-jobs jobs [--state S] [--limit N]``, ``jobs show ID`` (with its history) and
``jobs cancel ID``."""

from __future__ import annotations

from typing import Any

import typer

from soulspot_jobs.errors import JobAlreadyFinal, JobNotFound
from soulspot_jobs.jobs.records import Job, JobState
from soulspot_jobs.operate.commands.common import (
    EXIT_NOT_FOUND,
    JSON_OPTION,
    connected,
    fail,
    print_json,
    print_table,
    utc,
)

app = typer.Typer(help="List job records, show one with its history, or cancel one.")


def _summary(job: Job) -> str:
    details = job.details
    for key in ("query", "playlist_id", "mbid", "isrc"):
        if details.get(key):
            return str(details[key])
    if details.get("artist") or details.get("title"):
        return f"{details.get('artist') or ''} - {details.get('title') or ''}"
    return ""


@app.callback(invoke_without_command=True)
def jobs(
    ctx: typer.Context,
    state: str | None = typer.Option(
        None, help=f"Only jobs in this state: {', '.join(s.value for s in JobState)}."
    ),
    limit: int = typer.Option(20, min=1, help="Show at most this many, newest first."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The most recent jobs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    wanted = None
    if state is not None:
        try:
            wanted = JobState(state)
        except ValueError:
            known = ", ".join(s.value for s in JobState)
            fail(f"unknown --state {state!r}: use one of {known}")
    with connected() as app_:
        found = app_.store.find(state=wanted, limit=limit)
    if as_json:
        print_json([job.as_dict() for job in found])
        return
    rows = [
        [
            job.id,
            job.kind,
            job.state.value,
            job.service,
            job.attempts,
            utc(job.updated_at),
            _summary(job),
        ]
        for job in found
    ]
    print_table(["id", "kind", "state", "service", "attempts", "updated", "what"], rows)


@app.command()
def show(
    job_id: str = typer.Argument(..., help="The job id."), as_json: bool = JSON_OPTION
) -> None:
    """One job: its record and its history, oldest change first."""
    with connected() as app_:
        job = app_.job(job_id)
    if job is None:
        fail(f"no job {job_id!r}", EXIT_NOT_FOUND)
    if as_json:
        print_json(job.as_dict())
        return
    typer.echo(f"job       {job.id}")
    typer.echo(f"kind      {job.kind}")
    typer.echo(f"state     {job.state.value}")
    typer.echo(f"service   {job.service or '-'}")
    typer.echo(f"attempts  {job.attempts}")
    if job.deferred_until:
        typer.echo(f"deferred until  {utc(job.deferred_until / 1000)}")
    if job.last_error:
        typer.echo(f"{_last_error_label(job)}  {job.last_error}")
    typer.echo(f"created   {utc(job.created_at)}")
    typer.echo(f"updated   {utc(job.updated_at)}")
    for key, value in job.details.items():
        typer.echo(f"  {key}: {value}")
    typer.echo("history:")
    rows = [
        [utc(entry["at"]), entry["state"], entry.get("service"), entry.get("note")]
        for entry in job.history
    ]
    print_table(["at", "state", "service", "note"], rows)


@app.command()
def cancel(
    job_id: str = typer.Argument(..., help="The job id."), as_json: bool = JSON_OPTION
) -> None:
    """Cancel a job that is not finished: its record becomes cancelled, and its pending
    message (queued, delayed or deferred) ends without calling any upstream.

    Exits 1 when there is no such job, or when it is already done, failed or cancelled.
    """
    with connected() as app_:
        try:
            job = app_.cancel_job(job_id)
        except (JobNotFound, JobAlreadyFinal) as exc:
            fail(str(exc), EXIT_NOT_FOUND)
    if as_json:
        print_json(job.as_dict())
    else:
        typer.echo(f"job {job.id} cancelled")


def _last_error_label(job: Job) -> str:
    """What ``last_error`` holds: why the job waits now (``deferred because``), why it waited
    before it resumed (``was deferred because``: a deferral writes its reason there too), or a
    real error (``last error``)."""
    if job.state is JobState.DEFERRED:
        return "deferred because"
    entry = _last_entry_saying(job.history, job.last_error)
    if entry is not None and entry.get("state") == JobState.DEFERRED.value:
        return "was deferred because"
    return "last error"


def _last_entry_saying(history: list[dict[str, Any]], note: str | None) -> dict[str, Any] | None:
    """The latest history entry whose note is ``note``."""
    return next((entry for entry in reversed(history) if entry.get("note") == note), None)
