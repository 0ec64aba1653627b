"""The production entry point: ``dramatiq soulspot_jobs.worker`` runs the jobs in forked worker
processes configured from the environment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import psutil

from soulspot_jobs.embedded.server import EmbeddedRedis
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.settings import load_settings
from tests.jobs.conftest import CLIENT_MARGIN, Fakes, finished
from tests.polling import wait_until
from tests.servers import RedisKind

#: Seconds the worker command may take to shut down after SIGTERM.
SHUTDOWN_DEADLINE = 30


def test_the_dramatiq_worker_command_runs_a_download_job_to_done(
    redis_url: str, fakes: Fakes
) -> None:
    # Given the worker command started the way an operator starts it: settings from the env
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "SLSKD_URL": fakes.slskd.url,
        "SLSKD_API_KEY": "test-key",
        "SLSKD_SEARCH_POLL_INTERVAL": "0.1",
        "SLSKD_DOWNLOAD_POLL_INTERVAL": "0.1",
        "MUSICBRAINZ_URL": fakes.musicbrainz.url,
        "MUSICBRAINZ_MIN_INTERVAL": str(CLIENT_MARGIN * fakes.musicbrainz.min_interval),
        "LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "dramatiq", "soulspot_jobs.worker"]
    worker = subprocess.Popen([*command, "--processes", "2", "--threads", "2"], env=env)
    producer = SoulspotJobs(load_settings(REDIS_URL=redis_url))
    try:
        # When a producer enqueues a download
        track = CATALOG[1]
        job_id = producer.enqueue_download(f"{track.artist} - {track.title}")

        # Then the worker processes run its whole chain
        [job] = finished(producer, [job_id])
        assert job.state is JobState.DONE, job
        assert job.details["metadata"]["recording_id"] == track.mbid
    finally:
        producer.close()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(SHUTDOWN_DEADLINE)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def test_worker_processes_orphaned_while_redis_is_down_exit_within_their_shutdown_timeout(
    fakes: Fakes, redis_kind: RedisKind
) -> None:
    # Given the worker command on its own Redis, busy with jobs whose upstreams are unreachable
    # (so every worker thread logs), with a short shutdown timeout
    shutdown_timeout = 3.0
    with EmbeddedRedis(executable=redis_kind.executable) as server:
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "SLSKD_URL": "http://127.0.0.1:9",
            "SLSKD_API_KEY": "test-key",
            "MUSICBRAINZ_URL": "http://127.0.0.1:9",
            "LOG_FORMAT": "json",
        }
        producer = SoulspotJobs(load_settings(REDIS_URL=server.url))
        job_ids = [producer.enqueue_download(f"Artist {n} - Title {n}") for n in range(20)]
        job_ids += [producer.enqueue_enrichment("Artist", f"Title {n}") for n in range(20)]
        command = [sys.executable, "-m", "dramatiq", "soulspot_jobs.worker", "-p", "2", "-t", "4"]
        parent = subprocess.Popen(
            [*command, "--worker-shutdown-timeout", str(int(shutdown_timeout * 1000))],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        children: list[psutil.Process] = []
        try:
            wait_until(
                lambda: any(producer.job(j).attempts for j in job_ids),
                "the worker processes to take jobs",
                30,
            )
            producer.close()
            children = psutil.Process(parent.pid).children()
            assert len(children) == 2

            # When Redis goes away, then the parent is killed and the children get SIGTERM
            server.stop()
            parent.kill()
            parent.wait()
            for child in children:
                child.send_signal(signal.SIGTERM)

            # Then every worker process exits within its shutdown timeout (plus slack)
            _, alive = psutil.wait_procs(children, timeout=shutdown_timeout + 15)
            assert alive == [], f"still running: {[p.pid for p in alive]}"
        finally:
            parent.kill()
            parent.wait()
            for process in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
