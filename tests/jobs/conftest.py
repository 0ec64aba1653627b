"""Fixtures of the end-to-end job tests: the three fake upstreams, settings pointing at them,
and a SoulspotJobs app with a real Worker on the session's Redis."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dramatiq
import pytest

from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.fakes.slskd import FakeSlskd
from soulspot_jobs.fakes.spotify import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakeSpotify
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import FINAL_STATES, Job
from soulspot_jobs.settings import Settings, load_settings
from tests.polling import wait_until

#: Seconds between two requests the fake MusicBrainz accepts in most tests (the real rule is 1 s).
MUSICBRAINZ_INTERVAL = 0.2
#: The workers' limiter spaces requests this much wider than the fake's rule: the limiter
#: spaces its reservations, but a busy machine can delay one request's arrival more than the
#: fake's small jitter tolerance, which the fake would answer with a 503 (a service failure).
CLIENT_MARGIN = 1.5
#: Longest a test waits for its jobs to finish, in seconds.
JOB_DEADLINE = 30.0


@dataclass
class Fakes:
    slskd: FakeSlskd
    musicbrainz: FakeMusicBrainz
    spotify: FakeSpotify


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    """The three fake upstreams on free loopback ports, stopped after the test."""
    with (
        FakeSlskd(search_duration=0.2, transfer_duration=0.3) as slskd,
        FakeMusicBrainz(min_interval=MUSICBRAINZ_INTERVAL) as musicbrainz,
        FakeSpotify() as spotify,
    ):
        yield Fakes(slskd, musicbrainz, spotify)


def settings_for(
    redis_url: str, fakes: Fakes, *, musicbrainz_interval: float | None = None, **breaker: Any
) -> Settings:
    """Settings on the test Redis and the fakes; ``breaker`` overrides the breaker defaults.

    The workers' MusicBrainz limiter uses ``musicbrainz_interval`` when given, else the fake's
    rule widened by ``CLIENT_MARGIN``.
    """
    if musicbrainz_interval is None:
        musicbrainz_interval = CLIENT_MARGIN * (
            fakes.musicbrainz.min_interval or MUSICBRAINZ_INTERVAL
        )
    return load_settings(
        REDIS_URL=redis_url,
        slskd={
            "url": fakes.slskd.url,
            "api_key": "test-key",
            "search_poll_interval": 0.1,
            "download_poll_interval": 0.1,
        },
        musicbrainz={
            "url": fakes.musicbrainz.url,
            "min_interval": musicbrainz_interval,
        },
        spotify={
            "api_url": fakes.spotify.url,
            "accounts_url": fakes.spotify.url,
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
        },
        observability={"circuit_breaker": breaker},
    )


@contextmanager
def running(app: SoulspotJobs, *, threads: int = 4) -> Iterator[dramatiq.Worker]:
    """A real Worker consuming ``app``'s queues; stopped, and the app closed, afterwards."""
    worker = dramatiq.Worker(app.broker, worker_threads=threads, worker_timeout=50)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
        app.close()


def finished(app: SoulspotJobs, job_ids: list[str], *, timeout: float = JOB_DEADLINE) -> list[Job]:
    """Wait until every job is done or failed; return their records."""

    def all_final() -> bool:
        return all(app.job(job_id).state in FINAL_STATES for job_id in job_ids)

    wait_until(all_final, f"jobs {job_ids} to finish", timeout)
    return [app.job(job_id) for job_id in job_ids]
