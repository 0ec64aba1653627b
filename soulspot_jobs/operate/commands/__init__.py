"""The operators' commands of ``soulspot-jobs``: enqueue, status, reset, open, mode, jobs, deferred,
dead-letters and serve. :func:`register` adds them to the command line's Typer app."""

from __future__ import annotations

import typer

from soulspot_jobs.operate.commands import breakers, dead_letters, deferred, enqueue, jobs, serve


def register(app: typer.Typer) -> None:
    """Add every operator command to ``app``."""
    app.add_typer(enqueue.app, name="enqueue")
    app.command("status")(breakers.status)
    app.command("reset")(breakers.reset)
    app.command("open")(breakers.force_open)
    app.command("mode")(breakers.mode)
    app.add_typer(jobs.app, name="jobs")
    app.command("deferred")(deferred.deferred)
    app.add_typer(dead_letters.app, name="dead-letters")
    app.command("serve")(serve.serve)
