"""``soulspot-jobs serve [--host --port]``: the operators' page, ``/health`` and ``/metrics``."""

from __future__ import annotations

import signal
from types import FrameType

import typer

from soulspot_jobs.operate.commands.common import EXIT_BAD_INPUT, connected, fail
from soulspot_jobs.operate.web import DEFAULT_HOST, DEFAULT_PORT, OperatorServer


def serve(
    host: str = typer.Option(
        DEFAULT_HOST, help="Address to listen on (0.0.0.0: every one; the default: this machine)."
    ),
    port: int = typer.Option(DEFAULT_PORT, min=0, max=65535, help="Port (0: a free one)."),
) -> None:
    """Serve the operators' page at / (live breakers, deferred jobs, dead letters, jobs and
    workers; actions need SOULSPOT_ADMIN_TOKEN), GET /health (503 while a breaker is OPEN) and
    GET /metrics (Prometheus).

    Everything is read from Redis at each request. Runs until SIGINT or SIGTERM.
    """
    with connected() as jobs:
        try:
            server = OperatorServer(jobs, host, port)
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_BAD_INPUT)
        actions = (
            "actions need the admin token"
            if jobs.settings.admin_token.get_secret_value()
            else "read-only: SOULSPOT_ADMIN_TOKEN is not set"
        )
        typer.echo(
            f"serving {server.url}/ ({actions}), {server.url}/health and {server.url}/metrics",
            err=True,
        )
        # uvicorn stops on SIGINT or SIGTERM, then raises the signal again for the handler
        # found before it ran: let that be a clean exit rather than a death by signal.
        previous = signal.signal(signal.SIGTERM, _exit_cleanly)
        try:
            server.serve_forever()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
