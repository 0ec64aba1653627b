"""``honcho start`` runs the Procfile: the web process answers /health, the worker runs jobs.

Needs the ``soulspot-jobs serve`` and ``soulspot-jobs worker`` commands the Procfile names.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.settings import load_settings
from tests.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
#: Seconds honcho gets to stop its processes after SIGTERM.
STOP_DEADLINE = 20
#: Seconds the processes get to start and answer on this busy machine.
START_DEADLINE = 60


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _web_port(base: int) -> int:
    """honcho gives the first process type ``base`` and each next one 100 more."""
    names = [line.split(":", 1)[0] for line in (ROOT / "Procfile").read_text().splitlines()]
    return base + 100 * names.index("web")


@dataclass
class Honcho:
    process: subprocess.Popen[bytes]
    #: Where honcho writes its processes' output.
    output: Path
    web_port: int

    def running(self) -> bool:
        """True while honcho runs; fails the test, showing the output, once it has exited."""
        if self.process.poll() is not None:
            text = self.output.read_text(errors="replace")
            pytest.fail(f"honcho exited with {self.process.returncode}:\n{text}")
        return True


@pytest.fixture
def honcho(redis_url: str, tmp_path: Path) -> Iterator[Honcho]:
    """``honcho start`` on the repository's Procfile, loopback only, stopped after the test;
    the worker's MusicBrainz is a fake."""
    base = _free_port()
    no_env_file = tmp_path / "empty.env"
    no_env_file.write_text("")
    output = tmp_path / "honcho.log"
    with FakeMusicBrainz(min_interval=0) as musicbrainz, open(output, "wb") as log:
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "REDIS_URL": redis_url,
            "WEB_HOST": "127.0.0.1",
            "MUSICBRAINZ_URL": musicbrainz.url,
            "MUSICBRAINZ_MIN_INTERVAL": "0.1",
            "LOG_LEVEL": "WARNING",
        }
        command = [sys.executable, "-m", "honcho", "start"]
        options = ["-f", str(ROOT / "Procfile"), "-e", str(no_env_file), "-p", str(base)]
        process = subprocess.Popen(
            [*command, *options],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield Honcho(process, output, _web_port(base))
        finally:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_DEADLINE)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_honcho_start_runs_the_web_process_answering_health_and_the_worker_running_jobs(
    honcho: Honcho, redis_url: str
) -> None:
    # Given the Procfile started by honcho, on the test Redis

    # When /health is asked over loopback
    def health() -> httpx.Response | None:
        honcho.running()
        try:
            return httpx.get(f"http://127.0.0.1:{honcho.web_port}/health", timeout=2)
        except httpx.TransportError:
            return None

    wait_until(lambda: health() is not None, "the web process to answer", START_DEADLINE)

    # Then the web process answers with the breakers' health document
    answer = health()
    assert answer is not None and answer.status_code == 200, answer
    assert answer.json()["status"] == "healthy"
    assert set(answer.json()["services"]) >= {"slskd", "spotify", "musicbrainz"}

    # And when a job is enqueued, the worker process runs it to done
    producer = SoulspotJobs(load_settings(REDIS_URL=redis_url))
    try:
        track = CATALOG[0]
        job_id = producer.enqueue_enrichment(isrc=track.isrc)
        wait_until(
            lambda: honcho.running() and producer.job(job_id).state is JobState.DONE,
            "the worker to run the job",
            START_DEADLINE,
        )
        assert producer.job(job_id).details["metadata"]["recording_id"] == track.mbid
    finally:
        producer.close()
