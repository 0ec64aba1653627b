"""``soulspot-jobs demo``: the whole product on one machine, in about fifteen seconds.

It starts a Redis (embedded unless ``REDIS_URL`` is set), fake slskd, MusicBrainz and Spotify
servers on loopback, and a Dramatiq worker. It imports the demo playlist from Spotify (one
download job per track), takes slskd down while the downloads run, shows the slskd jobs being
deferred (not failed) while MusicBrainz jobs go on, and shows every job finishing once slskd
is back, with no retry spent on the outage.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import dramatiq
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from soulspot_jobs.app import SoulspotJobs
from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.fakes.slskd import FakeSlskd
from soulspot_jobs.fakes.spotify import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEMO_PLAYLIST,
    FakeSpotify,
)
from soulspot_jobs.jobs import FINAL_STATES, JobState
from soulspot_jobs.logging import redact_url
from soulspot_jobs.redis_server import EmbeddedRedis
from soulspot_jobs.settings import Settings

#: Seconds slskd is down in the demo, and seconds the breakers stay OPEN.
OUTAGE = 4.0
BREAKER_TIMEOUT = 1.5
#: Seconds the demo waits for its jobs before giving up.
DEADLINE = 60.0
SERVICES = ("spotify-api", "slskd-api", "musicbrainz-api")


def run(settings: Settings) -> int:
    """Run the demo; exit status 0 when every job finished as expected."""
    console = Console()
    with contextlib.ExitStack() as stack:
        url = settings.redis_url or stack.enter_context(EmbeddedRedis()).url
        slskd = stack.enter_context(FakeSlskd(search_duration=0.5, transfer_duration=3.0))
        musicbrainz = stack.enter_context(FakeMusicBrainz(min_interval=1.0))
        spotify = stack.enter_context(FakeSpotify())
        console.print(
            f"[bold]Redis[/bold] {redact_url(url)}; fake slskd {slskd.url}, "
            f"MusicBrainz {musicbrainz.url}, Spotify {spotify.url}"
        )
        demo_settings = _pointed_at(settings, url, slskd, musicbrainz, spotify)
        app = SoulspotJobs(demo_settings)
        stack.callback(app.close)
        worker = dramatiq.Worker(app.broker, worker_threads=4, worker_timeout=100)
        worker.start()
        stack.callback(worker.stop)
        return _scenario(console, app, slskd)
    return 1


def _pointed_at(
    settings: Settings,
    url: str,
    slskd: FakeSlskd,
    musicbrainz: FakeMusicBrainz,
    spotify: FakeSpotify,
) -> Settings:
    """``settings`` with Redis, the fakes and demo-sized breaker timings."""
    breaker = settings.observability.circuit_breaker.model_copy(
        update={"failure_threshold": 2, "timeout": BREAKER_TIMEOUT}
    )
    return settings.model_copy(
        update={
            "redis_url": url,
            "key_prefix": f"{settings.key_prefix}-demo-{time.time_ns()}",
            "observability": settings.observability.model_copy(update={"circuit_breaker": breaker}),
            "slskd": settings.slskd.model_copy(
                update={
                    "url": slskd.url,
                    "api_key": SecretStr("test-key"),
                    "search_poll_interval": 0.2,
                    "download_poll_interval": 0.3,
                }
            ),
            "musicbrainz": settings.musicbrainz.model_copy(
                update={"url": musicbrainz.url, "min_interval": 1.0}
            ),
            "spotify": settings.spotify.model_copy(
                update={
                    "api_url": spotify.url,
                    "accounts_url": spotify.url,
                    "client_id": DEFAULT_CLIENT_ID,
                    "client_secret": SecretStr(DEFAULT_CLIENT_SECRET),
                    "refresh_token": SecretStr(""),
                }
            ),
        }
    )


def _scenario(console: Console, app: SoulspotJobs, slskd: FakeSlskd) -> int:
    console.print(f"\n[bold]1. Import the Spotify playlist {DEMO_PLAYLIST!r}[/bold]")
    playlist_id = app.enqueue_playlist(DEMO_PLAYLIST)
    _wait(lambda: app.job(playlist_id).state in FINAL_STATES)
    track_jobs = app.job(playlist_id).details.get("jobs", [])
    console.print(f"   {len(track_jobs)} download jobs enqueued")

    console.print("\n[bold]2. slskd goes down while the downloads run[/bold]")
    _wait(lambda: any(app.job(j).state is JobState.DOWNLOADING for j in track_jobs))
    slskd.faults.outage(OUTAGE, mode="refuse")
    down_until = time.monotonic() + OUTAGE
    lookup = app.enqueue_enrichment("Massive Attack", "Teardrop")
    _wait(lambda: app.middleware.index.counts().get("slskd-api", 0) > 0)
    _wait(lambda: app.job(lookup).state in FINAL_STATES)
    still_down = time.monotonic() < down_until
    console.print(
        f"   a MusicBrainz job finished meanwhile: {app.job(lookup).state}"
        f"{' (slskd still down)' if still_down else ''}"
    )
    _show_deferred(console, app)

    console.print("\n[bold]3. slskd is back: every job finishes[/bold]")
    _wait(lambda: all(app.job(j).state in FINAL_STATES for j in track_jobs))
    _show_jobs(console, app, track_jobs)
    _show_breakers(console, app)
    done = all(app.job(j).state is JobState.DONE for j in track_jobs)
    return 0 if done else 1


def _wait(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo's jobs did not finish in time")
        time.sleep(0.05)


def _show_deferred(console: Console, app: SoulspotJobs) -> None:
    table = Table(title="Deferred jobs (the middleware's index)")
    for column in ("actor", "service", "due in", "deferrals", "why"):
        table.add_column(column)
    now_ms = time.time() * 1000
    for job in app.middleware.index.jobs():
        table.add_row(
            job.actor,
            job.service,
            f"{max(job.eta - now_ms, 0) / 1000:.1f} s",
            str(job.deferrals),
            job.reason[:70],
        )
    console.print(table)


def _show_jobs(console: Console, app: SoulspotJobs, job_ids: list[str]) -> None:
    table = Table(title="Download jobs")
    for column in ("track", "state", "attempts", "file", "MusicBrainz recording"):
        table.add_column(column)
    for job_id in job_ids:
        job = app.job(job_id)
        metadata = job.details.get("metadata", {})
        table.add_row(
            job.details.get("query", ""),
            job.state.value,
            str(job.attempts),
            job.details.get("filename", "").rsplit("\\", 1)[-1],
            metadata.get("recording_id", job.last_error or ""),
        )
    console.print(table)


def _show_breakers(console: Console, app: SoulspotJobs) -> None:
    table = Table(title="Circuit breakers (shared by every worker through Redis)")
    for column in ("service", "state", "requests", "failures", "rejections"):
        table.add_column(column)
    for service in SERVICES:
        stats = app.middleware.breaker(service).stats
        table.add_row(
            service,
            stats.state.name,
            str(stats.total_requests),
            str(stats.total_failures),
            str(stats.total_rejections),
        )
    console.print(table)
