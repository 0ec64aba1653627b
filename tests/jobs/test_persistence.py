"""Jobs on the embedded Redis outlive the worker and the server: queued and deferred jobs are
found again after the worker is restarted and the redis-server was killed outright."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import redis

from soulspot_jobs.embedded import SharedRedis
from soulspot_jobs.embedded.connection import redis_for
from soulspot_jobs.embedded.processes import wait_for_exit
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.settings import load_settings
from tests.jobs.conftest import CLIENT_MARGIN, Fakes, finished, settings_for
from tests.polling import wait_until
from tests.processes import SOULSPOT_JOBS, Spawned, environment

#: What Dramatiq logs when a worker process has started consuming.
READY = "Worker process is ready for action."
#: Seconds slskd's breaker is held OPEN, so that the first jobs are deferred.
HOLD_OPEN = 4.0
#: Breaker settings that let the jobs through quickly once the hold is over.
BREAKER = {"success_threshold": 1, "half_open_max_calls": 4}
#: Seconds a worker may take to start and to stop on a busy machine; the jobs to finish.
START_DEADLINE = 60.0
STOP_DEADLINE = 30.0
JOB_DEADLINE = 60.0


def _worker(tmp_path: Path, data_dir: Path, fakes: Fakes) -> Spawned:
    """``soulspot-jobs worker`` on the embedded Redis and the fakes, as an operator starts it."""
    env = environment(
        data_dir,
        LOG_FORMAT="json",
        SLSKD_URL=fakes.slskd.url,
        SLSKD_API_KEY="test-key",
        SLSKD_SEARCH_POLL_INTERVAL="0.1",
        SLSKD_DOWNLOAD_POLL_INTERVAL="0.1",
        MUSICBRAINZ_URL=fakes.musicbrainz.url,
        MUSICBRAINZ_MIN_INTERVAL=str(CLIENT_MARGIN * fakes.musicbrainz.min_interval),
        CIRCUIT_BREAKER_SUCCESS_THRESHOLD=str(BREAKER["success_threshold"]),
        CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS=str(BREAKER["half_open_max_calls"]),
    )
    command = [SOULSPOT_JOBS, "worker", "--processes", "1", "--threads", "4"]
    return Spawned(command, env=env, cwd=tmp_path)


def test_queued_and_deferred_jobs_survive_a_worker_restart_and_a_killed_redis(
    tmp_path: Path, data_dir: Path, fakes: Fakes
) -> None:
    queries = [f"{track.artist} - {track.title}" for track in CATALOG[:4]]
    with redis_for(load_settings(REDIS_URL=None, SOULSPOT_DATA_DIR=str(data_dir))) as url:
        # Given a worker on the embedded Redis, and slskd's breaker held OPEN for a while
        worker = _worker(tmp_path, data_dir, fakes)
        try:
            worker.wait_for(READY, timeout=START_DEADLINE)
            producer = SoulspotJobs(settings_for(url, fakes, **BREAKER))
            slskd = producer.breakers["slskd-api"]
            slskd.record_failure_sync(slskd.acquire_sync(), hold_open=HOLD_OPEN)

            # ... two download jobs deferred by it
            deferred = [producer.enqueue_download(query) for query in queries[:2]]
            wait_until(
                lambda: all(producer.job(j).state is JobState.DEFERRED for j in deferred),
                "the first jobs to be deferred",
            )

            # ... the worker stopped, and two more jobs queued while no worker runs
            assert worker.stop(signal.SIGTERM, STOP_DEADLINE) == 0
            queued = [producer.enqueue_download(query) for query in queries[2:]]
            assert [producer.job(j).state for j in queued] == [JobState.QUEUED] * 2
            producer.close()

            # When the redis-server is killed outright (once it has written its append-only
            # file: with appendfsync everysec a slow disk may hold writes back up to 2 s, which
            # a crash then loses) and the worker is started again
            with redis.Redis.from_url(url) as client:
                wait_until(
                    lambda: client.info("persistence")["aof_buffer_length"] == 0,
                    "the append-only file to be written",
                )
                killed = client.info("server")["process_id"]
            os.kill(killed, signal.SIGKILL)
            assert wait_for_exit(killed, STOP_DEADLINE)
            worker = _worker(tmp_path, data_dir, fakes)
            worker.wait_for(READY, timeout=START_DEADLINE)

            # Then a new server, read from the append-only file, has every job, and all finish
            restarted = SharedRedis(data_dir).status().pid
            assert restarted is not None and restarted != killed
            checker = SoulspotJobs(settings_for(url, fakes))
            try:
                jobs = finished(checker, deferred + queued, timeout=JOB_DEADLINE)
            finally:
                checker.close()
            assert [job.state for job in jobs] == [JobState.DONE] * 4, jobs
            assert {job.details["query"] for job in jobs} == set(queries)
            assert worker.stop(signal.SIGTERM, STOP_DEADLINE) == 0
        finally:
            worker.kill_group()
