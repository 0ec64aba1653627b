"""``soulspot-jobs demo``: the whole product on one machine, in well under two minutes.

It starts a Redis (embedded unless ``REDIS_URL`` is set), fake slskd, MusicBrainz and Spotify
servers on loopback in this process, and two Dramatiq worker processes
(``dramatiq soulspot_jobs.worker``, with the :mod:`~soulspot_jobs.demo.instrument` tally) whose
logs go to a file. It imports a Spotify playlist of fifty tracks through the real actor chain (one
download job per track: search on slskd, download, poll, MusicBrainz lookup). Once a quarter of
the downloads are under way slskd goes down long enough for its breaker to open: the slskd jobs
are deferred, not failed, and all of them finish once slskd is back. A summary ends the run:
jobs done and failed, deferrals, Dramatiq retries spent, how soon deferred jobs ran once slskd's
breaker closed, wall time.

Ctrl-C (or SIGTERM) stops everything the demo started: the worker processes (their whole
process group), the embedded Redis and the fakes; keys it wrote to an external Redis are deleted.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import redis
from rich.console import Console

from soulspot_jobs.circuit_breaker import BreakerStats, CircuitState
from soulspot_jobs.circuit_breaker.config import CircuitBreakerFields
from soulspot_jobs.demo.processes import DemoError, WorkerProcesses
from soulspot_jobs.demo.tally import deferred_runs, read_tally
from soulspot_jobs.demo.view import (
    BreakerView,
    LiveView,
    PlainView,
    Release,
    Snapshot,
    Summary,
    print_summary,
)
from soulspot_jobs.embedded.server import EmbeddedRedis
from soulspot_jobs.fakes.catalog import MIXTAPE
from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.fakes.slskd import FakeSlskd
from soulspot_jobs.fakes.spotify import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    MIXTAPE_PLAYLIST,
    FakeSpotify,
)
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import FINAL_STATES, JobState
from soulspot_jobs.logging import redact_url
from soulspot_jobs.settings import CircuitBreakerOverrides, Settings

#: Tracks in the demo playlist, and seconds slskd is down.
TRACKS = 50
OUTAGE = 6.0
#: The breakers' settings in the demo: open after 2 failures in a row, for 1.5 s.
FAILURE_THRESHOLD = 2
BREAKER_TIMEOUT = 1.5
#: Seconds the fake slskd takes for a search and for a download.
SEARCH_DURATION = 0.5
TRANSFER_DURATION = 2.0
#: Seconds between two looks of a job at its search and at its download.
SEARCH_POLL_INTERVAL = 0.25
DOWNLOAD_POLL_INTERVAL = 0.5
#: Seconds between two requests the fake MusicBrainz accepts (the real one: 1.0), and the
#: workers' spacing, a margin wider so a late arrival is not refused.
MUSICBRAINZ_INTERVAL = 0.3
MUSICBRAINZ_CLIENT_INTERVAL = 0.45
#: Share of the downloads under way (downloading or later) when slskd goes down.
OUTAGE_AT = 0.25
#: Seconds between two looks at the jobs.
REFRESH = 0.25
#: Seconds the demo waits for its jobs, from its start, before giving up.
DEADLINE = 110.0
#: Exit status after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130
#: The breakers the demo shows, in this order.
SERVICES = ("spotify-api", "slskd-api", "musicbrainz-api")
#: States of a download job that got past its search.
UNDER_WAY = (JobState.DOWNLOADING, JobState.ENRICHING, JobState.DONE)
#: Prefixes of the environment variables the settings read; the workers get only the demo's.
_SETTINGS_ENV_PREFIXES = (
    "REDIS_URL",
    "SOULSPOT_",
    "SLSKD_",
    "MUSICBRAINZ_",
    "SPOTIFY_",
    "CIRCUIT_BREAKER_",
    "LOG_",
)


def run(
    settings: Settings,
    *,
    tracks: int = TRACKS,
    outage: float = OUTAGE,
    json_summary: bool = False,
    console: Console | None = None,
) -> int:
    """Run the demo; 0 when every job is done, 1 otherwise, 130 when interrupted.

    ``tracks`` and ``outage`` (seconds) size the run; ``json_summary`` prints the summary as a
    JSON line at the very end. A terminal gets the live view, anything else plain lines.
    """
    if tracks < 1:
        raise ValueError(f"tracks must be at least 1, got {tracks}")
    if not outage > 0:
        raise ValueError(f"outage must be a positive number of seconds, got {outage}")
    console = console or Console()
    started = time.monotonic()
    try:
        with _interruptible(), contextlib.ExitStack() as stack:
            url = settings.redis_url or stack.enter_context(EmbeddedRedis()).url
            slskd = stack.enter_context(
                FakeSlskd(
                    catalog=MIXTAPE,
                    search_duration=SEARCH_DURATION,
                    transfer_duration=TRANSFER_DURATION,
                )
            )
            musicbrainz = stack.enter_context(
                FakeMusicBrainz(catalog=MIXTAPE, min_interval=MUSICBRAINZ_INTERVAL)
            )
            spotify = stack.enter_context(FakeSpotify(catalog=MIXTAPE))
            spotify.add_playlist(MIXTAPE_PLAYLIST, MIXTAPE, size=tracks)
            console.print(
                f"Redis {redact_url(url)}; fake slskd {slskd.url}, "
                f"MusicBrainz {musicbrainz.url}, Spotify {spotify.url}",
                highlight=False,
                soft_wrap=True,
            )
            demo_settings = _demo_settings(settings, url)
            if settings.redis_url:  # runs last: after the workers and the producer stopped
                stack.callback(_delete_keys, url, demo_settings.key_prefix)
            app = SoulspotJobs(demo_settings)
            stack.callback(app.close)
            log_dir = Path(tempfile.mkdtemp(prefix="soulspot-demo-"))
            workers = stack.enter_context(
                WorkerProcesses(
                    _worker_env(demo_settings, slskd, musicbrainz, spotify),
                    log_path=log_dir / "worker.log",
                    cwd=log_dir,
                )
            )
            console.print(
                f"{workers.processes} worker processes ({workers.threads} threads each), "
                f"logs in {workers.log_path}",
                highlight=False,
                soft_wrap=True,
            )
            view = LiveView(console) if console.is_terminal else PlainView(console)
            with view:
                scenario = _Scenario(app, slskd, workers, view, tracks, outage, started)
                summary = scenario.play()
            print_summary(console, summary, as_json=json_summary)
            return 0 if summary.succeeded else 1
    except KeyboardInterrupt:
        console.print("Interrupted: the demo stopped everything it started.")
        return EXIT_INTERRUPTED
    except DemoError as exc:
        console.print(f"[red]error: {exc}[/red]")
        return 1


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` once; further ones are ignored, so the
    clean-up that follows cannot itself be cut short and leave processes behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _demo_settings(settings: Settings, url: str) -> Settings:
    """The demo's settings: its Redis, its own key prefix, demo-sized breakers for every
    service (the user's breaker settings do not apply to the demo)."""
    no_overrides = CircuitBreakerOverrides()
    breaker = settings.observability.circuit_breaker.model_copy(
        update={
            **CircuitBreakerFields(
                failure_threshold=FAILURE_THRESHOLD, timeout=BREAKER_TIMEOUT
            ).model_dump(),
            "slskd_api": no_overrides,
            "spotify_api": no_overrides,
            "musicbrainz_api": no_overrides,
        }
    )
    return settings.model_copy(
        update={
            "redis_url": url,
            "key_prefix": f"{settings.key_prefix}-demo-{time.time_ns()}",
            "observability": settings.observability.model_copy(update={"circuit_breaker": breaker}),
        }
    )


def _worker_env(
    settings: Settings, slskd: FakeSlskd, musicbrainz: FakeMusicBrainz, spotify: FakeSpotify
) -> dict[str, str]:
    """The worker processes' environment: this one without any soulspot-jobs setting, plus the
    demo's Redis, key prefix, breakers and fakes."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_SETTINGS_ENV_PREFIXES)
    }
    breaker = settings.observability.circuit_breaker
    for name in CircuitBreakerFields.model_fields:
        value = getattr(breaker, name)
        env[f"CIRCUIT_BREAKER_{name.upper()}"] = "none" if value is None else str(value)
    env.update(
        {
            "REDIS_URL": settings.redis_url or "",
            "SOULSPOT_KEY_PREFIX": settings.key_prefix,
            "LOG_LEVEL": settings.log_level,
            "LOG_FORMAT": "json",
            "SLSKD_URL": slskd.url,
            "SLSKD_API_KEY": slskd.api_key,
            "SLSKD_SEARCH_POLL_INTERVAL": str(SEARCH_POLL_INTERVAL),
            "SLSKD_DOWNLOAD_POLL_INTERVAL": str(DOWNLOAD_POLL_INTERVAL),
            "MUSICBRAINZ_URL": musicbrainz.url,
            "MUSICBRAINZ_MIN_INTERVAL": str(MUSICBRAINZ_CLIENT_INTERVAL),
            "SPOTIFY_API_URL": spotify.url,
            "SPOTIFY_ACCOUNTS_URL": spotify.url,
            "SPOTIFY_CLIENT_ID": DEFAULT_CLIENT_ID,
            "SPOTIFY_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _delete_keys(url: str, prefix: str) -> None:
    """Delete every key under the demo's own ``prefix`` (an external Redis keeps nothing)."""
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + ":*"
    client = redis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    except redis.RedisError:
        pass  # the user's Redis went away: nothing more can be cleaned
    finally:
        client.close()


@dataclass
class _Outage:
    """The slskd outage: when it began and ends (monotonic seconds), once it began."""

    seconds: float
    began: float | None = None
    announced_end: bool = False

    @property
    def ends(self) -> float:
        return math.inf if self.began is None else self.began + self.seconds

    def over(self, now: float) -> bool:
        return self.began is not None and now >= self.ends


class _Scenario:
    """The demo's story: import the playlist, take slskd down midway, wait for every job."""

    def __init__(
        self,
        app: SoulspotJobs,
        slskd: FakeSlskd,
        workers: WorkerProcesses,
        view: LiveView | PlainView,
        tracks: int,
        outage: float,
        started: float,
    ) -> None:
        self.app = app
        self.slskd = slskd
        self.workers = workers
        self.view = view
        self.tracks = tracks
        self.outage = _Outage(outage)
        self.started = started

        self.slskd_opened = False
        #: When the demo first saw slskd's breaker CLOSED after OPEN: the time of that change,
        #: in epoch seconds of the Redis server (``last_state_change``).
        self.slskd_closed_at: float | None = None

    def play(self) -> Summary:
        self.view.event(f"Importing the Spotify playlist {MIXTAPE_PLAYLIST} ({self.tracks} tracks)")
        playlist_id = self.app.enqueue_playlist(MIXTAPE_PLAYLIST)
        track_ids: list[str] = []
        problem = ""
        while True:
            self.workers.check()
            now = time.monotonic()
            playlist = self.app.job(playlist_id)
            if not track_ids and playlist is not None and playlist.state is JobState.DONE:
                track_ids = list(playlist.details.get("jobs", []))
                self.view.event(f"{len(track_ids)} download jobs enqueued")
            states = self._states(track_ids)
            self._drive_outage(states, now)
            snapshot = self._snapshot(states, len(track_ids) or self.tracks, now)
            self.view.show(snapshot)
            finished = sum(states[state] for state in FINAL_STATES)
            if playlist is not None and playlist.state is JobState.FAILED:
                problem = f"the playlist import failed: {playlist.last_error}"
                break
            if track_ids and finished == len(track_ids) and self.outage.over(now):
                break
            if now - self.started > DEADLINE:
                problem = f"timed out after {DEADLINE:.0f} s"
                break
            time.sleep(REFRESH)
        return self._summary(playlist_id, track_ids, problem)

    def _states(self, job_ids: list[str]) -> Counter[JobState]:
        jobs = (self.app.job(job_id) for job_id in job_ids)
        return Counter(job.state for job in jobs if job is not None)

    def _drive_outage(self, states: Counter[JobState], now: float) -> None:
        """Take slskd down once enough downloads are under way; announce when it is back."""
        under_way = sum(states[state] for state in UNDER_WAY)
        if self.outage.began is None and under_way >= max(1, math.ceil(OUTAGE_AT * self.tracks)):
            self.slskd.faults.outage(self.outage.seconds, mode="refuse")
            self.outage.began = now
            self.view.event(
                f"slskd goes down for {self.outage.seconds:.1f} s "
                f"({under_way} of {self.tracks} downloads under way)"
            )
        elif self.outage.over(now) and not self.outage.announced_end:
            self.outage.announced_end = True
            self.view.event("slskd is back")

    def _phase(self, now: float) -> str:
        if self.outage.began is None:
            return "slskd up"
        if not self.outage.over(now):
            return f"slskd DOWN, back in {self.outage.ends - now:.1f} s"
        return "slskd back"

    def _snapshot(self, states: Counter[JobState], total: int, now: float) -> Snapshot:
        breakers = []
        for service in SERVICES:
            stats = self.app.breakers[service].stats
            if service == "slskd-api":
                self._watch_slskd(stats)
            breakers.append(
                BreakerView(service, stats.state.value, stats.retry_after, stats.total_failures)
            )
        tally = read_tally(self.app.broker.client, self.app.keys, SERVICES)
        return Snapshot(
            elapsed=now - self.started,
            phase=self._phase(now),
            jobs={state.value: count for state, count in states.items()},
            total=total,
            breakers=tuple(breakers),
            deferred_now=self.app.deferred.counts(),
            deferrals=tally["deferrals"],
            retries=tally["retries"],
        )

    def _watch_slskd(self, stats: BreakerStats) -> None:
        """Note that slskd's breaker opened, and when it first closed after that."""
        if stats.state is CircuitState.OPEN:
            self.slskd_opened = True
        elif stats.state is CircuitState.CLOSED and self.slskd_opened and not self.slskd_closed_at:
            self.slskd_closed_at = stats.last_state_change

    def _release(self) -> Release | None:
        """How soon deferred slskd jobs ran once slskd's breaker closed, as measured: the close
        the demo saw, and the starts the workers recorded (both by the Redis server's clock)."""
        if self.slskd_closed_at is None:
            return None
        client, closed_at = self.app.broker.client, self.slskd_closed_at
        starts = deferred_runs(client, self.app.keys, "slskd-api", closed_at)
        if not starts:
            return Release(first=None, last=None, messages=0)
        first, last = starts[0] - closed_at, starts[-1] - closed_at
        return Release(first=first, last=last, messages=len(starts))

    def _summary(self, playlist_id: str, track_ids: list[str], problem: str) -> Summary:
        states = self._states([playlist_id, *track_ids])
        tally = read_tally(self.app.broker.client, self.app.keys, SERVICES)
        slskd = self.app.breakers["slskd-api"].stats
        self._watch_slskd(slskd)
        jobs = 1 + (len(track_ids) or self.tracks)
        done, failed = states[JobState.DONE], states[JobState.FAILED]
        return Summary(
            tracks=self.tracks,
            jobs=jobs,
            done=done,
            failed=failed,
            unfinished=jobs - done - failed,
            deferrals=tally["deferrals"],
            retries=tally["retries"],
            slskd_failures=slskd.total_failures,
            failure_threshold=FAILURE_THRESHOLD,
            slskd_opened=self.slskd_opened,
            slskd_release=self._release(),
            outage_seconds=self.outage.seconds if self.outage.began is not None else 0.0,
            wall_seconds=time.monotonic() - self.started,
            worker_log=str(self.workers.log_path),
            problem=problem,
        )
