"""``soulspot-jobs serve [--host --port]``: ``GET /health`` and ``GET /metrics`` over HTTP."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import typer

from soulspot_jobs.operate.commands.common import EXIT_BAD_INPUT, connected, fail
from soulspot_jobs.operate.web import DEFAULT_HOST, DEFAULT_PORT, OperatorServer


def serve(
    host: str = typer.Option(DEFAULT_HOST, help="Address to listen on (0.0.0.0: every one)."),
    port: int = typer.Option(DEFAULT_PORT, min=0, max=65535, help="Port (0: a free one)."),
) -> None:
    """Serve GET /health (503 while a breaker is OPEN) and GET /metrics (Prometheus).

    Both are read from Redis at each request. Runs until SIGINT or SIGTERM.
    """
    with connected() as jobs:
        try:
            server = OperatorServer(jobs, host, port)
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_BAD_INPUT)

        def stop(signum: int, frame: FrameType | None) -> None:
            threading.Thread(target=server.shutdown, daemon=True).start()

        previous = signal.signal(signal.SIGTERM, stop)
        typer.echo(f"serving {server.url}/health and {server.url}/metrics", err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            server.server_close()
