"""``soulspot-jobs enqueue download|playlist|enrich``: add a job and print its id."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import typer

from soulspot_jobs.operate.commands.common import JSON_OPTION, connected, fail, print_json

if TYPE_CHECKING:
    from soulspot_jobs.jobs.app import SoulspotJobs

app = typer.Typer(help="Add a job; prints its id.", no_args_is_help=True)


def _enqueue(add: Callable[[SoulspotJobs], str], as_json: bool) -> None:
    """Add one job with ``add``, then print its id; a refused argument is one line, exit 1."""
    with connected() as jobs:
        try:
            job_id = add(jobs)
        except ValueError as exc:
            fail(str(exc))
    if as_json:
        print_json({"job_id": job_id})
    else:
        typer.echo(job_id)


@app.command()
def download(
    query: str = typer.Argument(..., help='What to download: "Artist - Title".'),
    as_json: bool = JSON_OPTION,
) -> None:
    """Search slskd for a track, download the best file, then look its metadata up."""
    _enqueue(lambda jobs: jobs.enqueue_download(query), as_json)


@app.command()
def playlist(
    playlist: str = typer.Argument(
        ..., help="A Spotify playlist id, open.spotify.com link or spotify:playlist: URI."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Import a Spotify playlist: one download job per track."""
    _enqueue(lambda jobs: jobs.enqueue_playlist(playlist), as_json)


@app.command()
def enrich(
    isrc: str | None = typer.Option(None, help="Look the recording up by ISRC."),
    mbid: str | None = typer.Option(None, help="Look the recording up by MusicBrainz id."),
    artist: str | None = typer.Option(None, help="Artist name (with --title)."),
    title: str | None = typer.Option(None, help="Track title (with --artist)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Look a recording up on MusicBrainz by --mbid, --isrc, or --artist and --title."""
    if not (mbid or isrc or (artist and title)):
        fail("enqueue enrich needs --mbid, --isrc, or both --artist and --title")
    _enqueue(lambda jobs: jobs.enqueue_enrichment(artist, title, isrc=isrc, mbid=mbid), as_json)
