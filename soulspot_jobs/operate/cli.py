"""The ``soulspot-jobs`` command line."""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from soulspot_jobs import __version__
from soulspot_jobs.embedded.connection import RedisUnavailable
from soulspot_jobs.errors import ConfigurationError, InvalidJobError
from soulspot_jobs.logging import configure_logging
from soulspot_jobs.operate import commands
from soulspot_jobs.settings import Settings, SettingsError, load_settings

#: Exit status of a command refused because of an invalid setting.
EXIT_BAD_SETTINGS = 2

app = typer.Typer(
    name="soulspot-jobs",
    help="Background jobs for SoulSpot Bridge behind cluster-wide circuit breakers.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    """``--version``: print the version and exit."""
    if value:
        typer.echo(f"soulspot-jobs {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Background jobs for SoulSpot Bridge behind cluster-wide circuit breakers."""


def _settings_or_exit() -> Settings:
    """Load the settings; on an invalid one print ``error: ...`` on stderr and exit with 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None


@app.command()
def demo(
    tracks: int = typer.Option(50, "--tracks", min=1, help="Tracks in the demo playlist."),
    outage: float = typer.Option(
        6.0, "--outage", min=1.0, help="Seconds slskd is down midway (its breaker opens)."
    ),
    json_summary: bool = typer.Option(
        False, "--json", help="Print the summary as one JSON line, the last of the output."
    ),
) -> None:
    """Run the demo: two worker processes import a playlist through the fake upstreams while
    slskd goes down and comes back. Uses REDIS_URL, or an embedded redis-server when unset."""
    from soulspot_jobs.demo import scenario as scenario

    settings = _settings_or_exit()
    configure_logging(settings)
    raise typer.Exit(
        scenario.run(settings, tracks=tracks, outage=outage, json_summary=json_summary)
    )


@app.command("settings")
def show_settings(
    as_json: bool = typer.Option(False, "--json", help="Print every setting as one JSON document."),
) -> None:
    """Print what is set, then the defaults in force; secrets and URL passwords hidden."""
    from soulspot_jobs.operate.settings_report import settings_document, settings_lines

    settings = _settings_or_exit()
    if as_json:
        typer.echo(json.dumps(settings_document(settings), indent=2))
    else:
        typer.echo("\n".join(settings_lines(settings)))


@app.command()
def worker(
    processes: Annotated[
        int | None,
        typer.Option("--processes", "-p", min=1, help="Worker processes (default: one per CPU)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", "-t", min=1, help="Worker threads per process (default: 8)."),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Restart the workers when a .py file changes (development)."),
    ] = False,
    watch_dir: Annotated[
        Path | None,
        typer.Option(
            "--watch-dir",
            exists=True,
            file_okay=False,
            help="Directory --watch watches (implies --watch; default: the installed package).",
        ),
    ] = None,
) -> None:
    """Run Dramatiq worker processes for the jobs, as `dramatiq soulspot_jobs.worker` does.

    Uses REDIS_URL, or the embedded Redis of SOULSPOT_DATA_DIR (started if none runs). Checks
    each configured service's credentials once as the workers start (one log line each).
    SIGTERM or Ctrl-C stops the workers cleanly (exit status 0); a second one kills them.
    """
    import soulspot_jobs
    from soulspot_jobs.broker.startup import wait_for_redis
    from soulspot_jobs.clients.musicbrainz import contact_problem
    from soulspot_jobs.embedded.connection import data_dir
    from soulspot_jobs.jobs.credentials import start_credential_check
    from soulspot_jobs.operate.dramatiq_runner import WorkerRunner, dramatiq_command

    settings = _settings_or_exit()
    configure_logging(settings)
    refused = contact_problem(settings.musicbrainz)
    if refused is not None:
        typer.echo(f"error: {refused}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS)
    if watch and watch_dir is None:
        watch_dir = Path(soulspot_jobs.__file__).parent
    with ExitStack() as using:
        url = wait_for_redis(settings, using)
        env = {**os.environ, "SOULSPOT_DATA_DIR": str(data_dir(settings))}
        start_credential_check(settings, url)
        command = dramatiq_command(processes, threads)
        runner = WorkerRunner(command, env=env, watch=watch_dir, redis_url=url)
        code = runner.run()
    raise typer.Exit(code)


redis_app = typer.Typer(
    help="The embedded Redis that commands share while REDIS_URL is unset.",
    no_args_is_help=True,
)
app.add_typer(redis_app, name="redis")


@redis_app.command("status")
def redis_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Print whether the embedded Redis runs, its URL, pid, users and data directory."""
    from soulspot_jobs.embedded.connection import embedded_server

    settings = _settings_or_exit()
    status = embedded_server(settings).status()
    if as_json:
        typer.echo(json.dumps({**asdict(status), "redis_url": settings.redis_url_redacted}))
        return
    if settings.redis_url is not None:
        typer.echo(f"REDIS_URL is set: commands use {settings.redis_url_redacted}")
    if not status.running:
        typer.echo(f"embedded Redis: not running (data directory {status.data_dir})")
        return
    users = ", ".join(str(pid) for pid in status.users) or "none"
    typer.echo(f"embedded Redis: running, pid {status.pid}, {status.url}")
    typer.echo(f"  used by: {users}")
    typer.echo(f"  data: {status.data_dir} (append-only file {status.aof_bytes} bytes)")
    typer.echo(f"  log: {status.log}")


@redis_app.command("stop")
def redis_stop() -> None:
    """Stop the embedded Redis now, even while commands still use it (its data is kept)."""
    from soulspot_jobs.embedded.connection import embedded_server

    settings = _settings_or_exit()
    status = embedded_server(settings).stop()
    if not status.running:
        typer.echo(f"embedded Redis: not running (data directory {status.data_dir})")
        return
    still = f"; it was still used by {len(status.users)} process(es)" if status.users else ""
    typer.echo(f"embedded Redis: stopped pid {status.pid} in {status.data_dir}{still}")


commands.register(app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except (ConfigurationError, InvalidJobError) as exc:  # a bad setting or a refused job
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    except RedisUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
