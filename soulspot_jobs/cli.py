"""The ``soulspot-jobs`` command line."""

from __future__ import annotations

import json
import sys

import typer

from soulspot_jobs import __version__, commands
from soulspot_jobs.errors import ConfigurationError, InvalidJobError
from soulspot_jobs.logging import configure_logging
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
    from soulspot_jobs import demo as scenario

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
    from soulspot_jobs.settings_report import settings_document, settings_lines

    settings = _settings_or_exit()
    if as_json:
        typer.echo(json.dumps(settings_document(settings), indent=2))
    else:
        typer.echo("\n".join(settings_lines(settings)))


commands.register(app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except (ConfigurationError, InvalidJobError) as exc:  # a bad setting or a refused job
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)


if __name__ == "__main__":
    main()
