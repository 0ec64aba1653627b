"""``soulspot-jobs enqueue download|playlist|enrich``: add a job and print its id."""

from __future__ import annotations

import typer

from soulspot_jobs.commands.common import JSON_OPTION, connected, fail, print_json

app = typer.Typer(help="Add a job; prints its id.", no_args_is_help=True)


def _done(job_id: str, as_json: bool) -> None:
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
    with connected() as jobs:
        try:
            job_id = jobs.enqueue_download(query)
        except ValueError as exc:
            fail(str(exc))
    _done(job_id, as_json)


@app.command()
def playlist(
    playlist: str = typer.Argument(
        ..., help="A Spotify playlist id, open.spotify.com link or spotify:playlist: URI."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Import a Spotify playlist: one download job per track."""
    with connected() as jobs:
        try:
            job_id = jobs.enqueue_playlist(playlist)
        except ValueError as exc:
            fail(str(exc))
    _done(job_id, as_json)


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
    with connected() as jobs:
        try:
            job_id = jobs.enqueue_enrichment(artist, title, isrc=isrc, mbid=mbid)
        except ValueError as exc:
            fail(str(exc))
    _done(job_id, as_json)
