"""``.venv/bin/honcho start`` runs the Procfile as docs/deploying.md says: from the checkout, with
no virtualenv activated; the web process answers /health on 127.0.0.1 only, the worker runs jobs.

Needs the ``soulspot-jobs serve`` and ``soulspot-jobs worker`` commands the Procfile names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.settings import load_settings
from tests.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
#: The virtualenv's scripts: honcho, soulspot-jobs, python.
VENV_BIN = Path(sys.executable).parent
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


def _path_without_the_venv() -> str:
    """PATH as a shell has it before ``source .venv/bin/activate``."""
    entries = os.environ.get("PATH", "").split(os.pathsep)
    kept = [entry for entry in entries if entry and Path(entry).resolve() != VENV_BIN.resolve()]
    return os.pathsep.join(kept)


def _listening_addresses(port: int) -> set[str]:
    """The addresses a TCP socket listens on at ``port``, on this machine."""
    return {
        connection.laddr.ip
        for connection in psutil.net_connections(kind="tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
    }


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
    """``.venv/bin/honcho start`` in the checkout, as a terminal without an activated virtualenv
    runs it (no WEB_HOST: the Procfile's default address), stopped after the test; the worker's
    MusicBrainz is a fake."""
    base = _free_port()
    no_env_file = tmp_path / "empty.env"
    no_env_file.write_text("")
    output = tmp_path / "honcho.log"
    path = _path_without_the_venv()
    assert shutil.which("soulspot-jobs", path=path) is None, "soulspot-jobs on PATH already"
    with FakeMusicBrainz(min_interval=0) as musicbrainz, open(output, "wb") as log:
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "WEB_HOST")},
            "PATH": path,
            "REDIS_URL": redis_url,
            "MUSICBRAINZ_URL": musicbrainz.url,
            "MUSICBRAINZ_MIN_INTERVAL": "0.1",
            "LOG_LEVEL": "WARNING",
        }
        # The documented command, with a private .env and ports of the test's own
        command = [str(VENV_BIN / "honcho"), "start", "-e", str(no_env_file), "-p", str(base)]
        process = subprocess.Popen(
            command,
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


def test_honcho_start_from_the_venv_serves_health_on_loopback_and_runs_jobs(
    honcho: Honcho, redis_url: str
) -> None:
    # Given the Procfile started by the virtualenv's honcho, with .venv/bin not on PATH

    # When /health is asked over loopback
    def health() -> httpx.Response | None:
        honcho.running()
        try:
            return httpx.get(f"http://127.0.0.1:{honcho.web_port}/health", timeout=2)
        except httpx.TransportError:
            return None

    wait_until(lambda: health() is not None, "the web process to answer", START_DEADLINE)

    # Then the web process answers with the breakers' health document ...
    answer = health()
    assert answer is not None and answer.status_code == 200, answer
    assert answer.json()["status"] == "healthy"
    assert set(answer.json()["services"]) >= {"slskd", "spotify", "musicbrainz"}
    # ... and listens on 127.0.0.1 only, as `soulspot-jobs serve` does by default
    assert _listening_addresses(honcho.web_port) == {"127.0.0.1"}

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
