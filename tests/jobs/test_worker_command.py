"""The production entry point: ``dramatiq soulspot_jobs.worker`` runs the jobs in forked worker
processes configured from the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from soulspot_jobs.app import SoulspotJobs
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.jobs import JobState
from soulspot_jobs.settings import load_settings
from tests.jobs.conftest import CLIENT_MARGIN, Fakes, finished

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
