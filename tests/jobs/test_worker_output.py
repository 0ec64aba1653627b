"""What ``dramatiq soulspot_jobs.worker`` writes: each record once, in our format, no secret,
and a bad setting as one line instead of a traceback.

Every test runs the real command as an operator would (``dramatiq soulspot_jobs.worker -p 1
-t 2``) with its settings in the environment, and reads every byte it wrote.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from soulspot_jobs.embedded.server import EmbeddedRedis
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.fakes.slskd import FakeSlskd
from soulspot_jobs.fakes.spotify import DEFAULT_CLIENT_ID, DEMO_PLAYLIST, FakeSpotify
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.settings import load_settings
from tests.jobs.conftest import CLIENT_MARGIN, MUSICBRAINZ_INTERVAL, finished
from tests.servers import RedisKind

#: The worker command, from the virtualenv running the tests.
DRAMATIQ = str(Path(sys.executable).with_name("dramatiq"))
#: Seconds the worker command may take to stop after SIGTERM.
SHUTDOWN_DEADLINE = 30
#: Seconds a worker command refusing to start may take to exit.
REFUSAL_DEADLINE = 60
#: Prefixes of every variable the settings read: none may leak in from the test's environment.
_SETTINGS_VARIABLES = (
    "CIRCUIT_BREAKER_",
    "REDIS_URL",
    "SOULSPOT_",
    "LOG_",
    "SLSKD_",
    "MUSICBRAINZ_",
    "SPOTIFY_",
)

SLSKD_API_KEY = "slskdKey7Qx2ZpL9wRt"
SLSKD_PASSWORD = "slskdPass4Wd8KqVz"
MUSICBRAINZ_PASSWORD = "mbPass3Vn6Hs1Ju"
SPOTIFY_CLIENT_SECRET = "spotifySecret5Tg0RbNe"
REDIS_PASSWORD = "redisPass2Lm8YcXo"
#: A line Dramatiq's parent process writes in its own format (it never loads our module).
_DRAMATIQ_PARENT_LINE = re.compile(r"^\[[^\]]+\] \[PID \d+\] \[\w+\] \[dramatiq\.MainProcess\] ")


@dataclass
class Upstreams:
    slskd: FakeSlskd
    musicbrainz: FakeMusicBrainz
    spotify: FakeSpotify


@dataclass
class Run:
    """Everything a worker command wrote, filled in once it has exited."""

    stdout: bytes = b""
    stderr: bytes = b""
    returncode: int | None = None
    lines: list[str] = field(default_factory=list)


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    """The fake upstreams, expecting this module's API key and client secret."""
    with (
        FakeSlskd(api_key=SLSKD_API_KEY, search_duration=0.2, transfer_duration=0.3) as slskd,
        FakeMusicBrainz(min_interval=MUSICBRAINZ_INTERVAL) as musicbrainz,
        FakeSpotify(client_secret=SPOTIFY_CLIENT_SECRET) as spotify,
    ):
        yield Upstreams(slskd, musicbrainz, spotify)


@pytest.fixture
def locked_redis_url(redis_kind: RedisKind) -> Iterator[str]:
    """A fresh redis-server of this test that refuses clients without ``REDIS_PASSWORD``."""
    with EmbeddedRedis(executable=redis_kind.executable) as server:
        client = redis.Redis(host=server.host, port=server.port)
        client.config_set("requirepass", REDIS_PASSWORD)
        client.close()
        yield f"redis://:{REDIS_PASSWORD}@{server.host}:{server.port}/0"
        unlock = redis.Redis(host=server.host, port=server.port, password=REDIS_PASSWORD)
        unlock.config_set("requirepass", "")
        unlock.close()


def _with_userinfo(url: str, user: str, password: str) -> str:
    return url.replace("http://", f"http://{user}:{password}@", 1)


def _environment(redis_url: str, upstreams: Upstreams, **extra: str) -> dict[str, str]:
    """The test's environment without any settings, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTINGS_VARIABLES)}
    env.update(
        REDIS_URL=redis_url,
        SLSKD_URL=_with_userinfo(upstreams.slskd.url, "slskd-user", SLSKD_PASSWORD),
        SLSKD_API_KEY=SLSKD_API_KEY,
        SLSKD_SEARCH_POLL_INTERVAL="0.1",
        SLSKD_DOWNLOAD_POLL_INTERVAL="0.1",
        MUSICBRAINZ_URL=_with_userinfo(upstreams.musicbrainz.url, "mb-user", MUSICBRAINZ_PASSWORD),
        MUSICBRAINZ_MIN_INTERVAL=str(CLIENT_MARGIN * MUSICBRAINZ_INTERVAL),
        SPOTIFY_API_URL=upstreams.spotify.url,
        SPOTIFY_ACCOUNTS_URL=upstreams.spotify.url,
        SPOTIFY_CLIENT_ID=DEFAULT_CLIENT_ID,
        SPOTIFY_CLIENT_SECRET=SPOTIFY_CLIENT_SECRET,
        LOG_FORMAT="json",
    )
    env.update(extra)
    return env


@contextmanager
def worker_command(env: dict[str, str], tmp_path: Path) -> Iterator[Run]:
    """``dramatiq soulspot_jobs.worker -p 1 -t 2`` running; stopped with SIGTERM on leaving.

    Its stdout and stderr go to files (a pipe could fill up and block it), read into the
    :class:`Run` once it has exited.
    """
    run = Run()
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [DRAMATIQ, "soulspot_jobs.worker", "-p", "1", "-t", "2"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=err,
        )
        try:
            yield run
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                run.returncode = process.wait(SHUTDOWN_DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                run.returncode = process.wait()
    run.stdout, run.stderr = out_path.read_bytes(), err_path.read_bytes()
    run.lines = (run.stdout + run.stderr).decode("utf-8", errors="replace").splitlines()


def _refused_start(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a worker command expected to refuse to start (no start-up wait); it must exit on its
    own."""
    return subprocess.run(
        [DRAMATIQ, "soulspot_jobs.worker", "-p", "1", "-t", "1"],
        env={**env, "SOULSPOT_STARTUP_WAIT": "0"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=REFUSAL_DEADLINE,
    )


def _basic(user: str, password: str) -> bytes:
    return base64.b64encode(f"{user}:{password}".encode())


def test_no_secret_reaches_any_byte_the_worker_command_writes(
    locked_redis_url: str, upstreams: Upstreams, tmp_path: Path
) -> None:
    # Given a worker command logging everything (DEBUG) with a secret in each kind of setting
    # (a user's refresh token for Spotify among them)
    env = _environment(
        locked_redis_url,
        upstreams,
        LOG_LEVEL="DEBUG",
        SPOTIFY_REFRESH_TOKEN=upstreams.spotify.refresh_token,
    )
    producer = SoulspotJobs(load_settings(REDIS_URL=locked_redis_url))
    try:
        with worker_command(env, tmp_path) as run:
            # When it runs a playlist import (Spotify, then slskd and MusicBrainz per track)
            # and an enrichment through the fakes
            [playlist] = finished(producer, [producer.enqueue_playlist(DEMO_PLAYLIST)])
            track = CATALOG[2]
            enrichment = producer.enqueue_enrichment(track.artist, track.title)
            jobs = finished(producer, [*playlist.details["jobs"], enrichment], timeout=60)
            assert [job.state for job in jobs] == [JobState.DONE] * len(jobs), jobs
            records = [producer.store.client.hgetall(producer.store.key(j.id)) for j in jobs]
    finally:
        producer.close()

    # Then no secret, no token and no Basic credential is in anything it wrote
    written = run.stdout + run.stderr
    secrets = [
        SLSKD_API_KEY,
        SLSKD_PASSWORD,
        MUSICBRAINZ_PASSWORD,
        SPOTIFY_CLIENT_SECRET,
        REDIS_PASSWORD,
        upstreams.spotify.refresh_token,
        *upstreams.spotify.issued_tokens,
    ]
    encoded = [
        _basic("slskd-user", SLSKD_PASSWORD),
        _basic("mb-user", MUSICBRAINZ_PASSWORD),
        _basic(DEFAULT_CLIENT_ID, SPOTIFY_CLIENT_SECRET),
    ]
    assert upstreams.spotify.issued_tokens, "the worker never asked Spotify for a token"
    for secret in [s.encode() for s in secrets] + encoded:
        assert secret not in written, f"{secret!r} was written"
    # And none is in the job records either
    for record in records:
        for secret in secrets:
            assert secret.encode() not in b"".join([*record.keys(), *record.values()])
    # And the lines that would have held them were written, redacted (the test saw them)
    text = written.decode()
    assert "HTTP Request: GET http://slskd-user:***@127.0.0.1" in text
    assert "HTTP Request: GET http://mb-user:***@127.0.0.1" in text
    assert run.returncode == 0, text[-2000:]


def test_the_worker_command_writes_each_record_once_in_our_json(
    redis_url: str, upstreams: Upstreams, tmp_path: Path
) -> None:
    # Given a worker command at INFO
    env = _environment(redis_url, upstreams, LOG_LEVEL="INFO")
    producer = SoulspotJobs(load_settings(REDIS_URL=redis_url))
    try:
        with worker_command(env, tmp_path) as run:
            # When it runs a download job
            track = CATALOG[1]
            [job] = finished(
                producer, [producer.enqueue_download(f"{track.artist} - {track.title}")]
            )
            assert job.state is JobState.DONE, job
    finally:
        producer.close()

    # Then every line of the worker process is one of our JSON lines; the only others come
    # from Dramatiq's parent process, which never loads our module
    ours, theirs = [], []
    for line in run.lines:
        try:
            ours.append(json.loads(line))
        except ValueError:
            theirs.append(line)
    assert all(_DRAMATIQ_PARENT_LINE.match(line) for line in theirs), theirs
    # And each record is there once: the worker's start, and each HTTP request line
    messages = [line["message"] for line in ours]
    assert messages.count("Worker process is ready for action.") == 1
    requests = [m for m in messages if m.startswith("HTTP Request: ")]
    assert requests
    assert len(requests) == sum("HTTP Request: " in line for line in run.lines)
    assert {line["level"] for line in ours} <= {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "SLSKD_URL",
            "not-a-url",
            "error: invalid setting SLSKD_URL='not-a-url': must be an http:// or https:// URL",
        ),
        (
            "REDIS_URL",
            f"redis://:{REDIS_PASSWORD}@/0",
            "error: invalid setting REDIS_URL='redis://:***@/0': has no host",
        ),
        (
            "MUSICBRAINZ_URL",
            "https://musicbrainz.org",
            "error: invalid setting MUSICBRAINZ_CONTACT='soulspot-jobs@localhost': "
            "MUSICBRAINZ_URL is the real MusicBrainz",
        ),
        (
            "CIRCUIT_BREAKER_SLSKD_API",
            '{"timeout": 0}',
            "error: invalid setting CIRCUIT_BREAKER_SLSKD_API='{\"timeout\": 0}' (field timeout): "
            "Input should be greater than 0",
        ),
    ],
)
def test_a_bad_setting_stops_the_worker_command_with_one_line_and_status_2(
    redis_url: str, upstreams: Upstreams, tmp_path: Path, variable: str, value: str, line: str
) -> None:
    # Given a worker command with one unusable setting
    env = _environment(redis_url, upstreams, **{variable: value})

    # When it starts
    result = _refused_start(env, tmp_path)

    # Then it exits with 2 after one error line naming the variable and value, no traceback
    # (beside it, only Dramatiq's parent process says it booted and saw its worker exit)
    assert result.returncode == 2, result.stderr
    errors = [text for text in result.stderr.splitlines() if text.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(line)
    assert "Traceback" not in result.stderr
    assert REDIS_PASSWORD not in result.stderr + result.stdout
    others = [text for text in result.stderr.splitlines() if not text.startswith("error: ")]
    assert all(_DRAMATIQ_PARENT_LINE.match(text) for text in others), others


def test_a_redis_that_does_not_answer_stops_the_worker_command_with_one_line(
    upstreams: Upstreams, tmp_path: Path
) -> None:
    # Given a worker command pointed at a port where no Redis listens, with a password
    env = _environment(f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0", upstreams)

    # When it starts
    result = _refused_start(env, tmp_path)

    # Then it exits (Dramatiq's "broker connection failed" status) after one line, no password
    assert result.returncode == 3, result.stderr
    errors = [text for text in result.stderr.splitlines() if text.startswith("error: ")]
    assert errors == [
        "error: cannot reach Redis at REDIS_URL='redis://:***@127.0.0.1:1/0': "
        "Error 111 connecting to 127.0.0.1:1. Connection refused."
    ]
    assert "Traceback" not in result.stderr
    assert REDIS_PASSWORD not in result.stderr + result.stdout
