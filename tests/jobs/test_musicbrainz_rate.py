"""The MusicBrainz rule (1 request per second) holds across worker processes."""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Event

from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.settings import Settings
from tests.jobs.conftest import Fakes, finished, running, settings_for

#: Worker processes sharing the limiter, and enrichment jobs they run.
PROCESSES = 2
JOBS = 4
#: Seconds a child process may take to start and stop.
PROCESS_DEADLINE = 30.0


def run_worker(settings: Settings, ready: Event, stop: Event) -> None:
    """A worker process: the jobs app with a real Worker until ``stop`` is set."""
    app = SoulspotJobs(settings)
    with running(app, threads=2):
        ready.set()
        stop.wait(PROCESS_DEADLINE * 2)


def test_the_musicbrainz_limit_holds_across_two_worker_processes(
    redis_url: str, fakes: Fakes
) -> None:
    # Given a fake MusicBrainz enforcing the real rule, and two worker processes
    fakes.musicbrainz.stop()
    with FakeMusicBrainz(min_interval=1.0) as strict:
        # (the workers' limiter at exactly the real rule: this test is about the limiter)
        shared = Fakes(fakes.slskd, strict, fakes.spotify)
        settings = settings_for(redis_url, shared, musicbrainz_interval=1.0)
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        readies = [context.Event() for _ in range(PROCESSES)]
        workers = [
            context.Process(target=run_worker, args=(settings, ready, stop)) for ready in readies
        ]
        for process in workers:
            process.start()
        try:
            assert all(ready.wait(PROCESS_DEADLINE) for ready in readies)

            # When enrichment jobs arrive for both to run at once
            producer = SoulspotJobs(settings)
            job_ids = [producer.enqueue_enrichment(t.artist, t.title) for t in CATALOG[:JOBS]]
            jobs = finished(producer, job_ids, timeout=60)
            producer.close()
        finally:
            stop.set()
            for process in workers:
                process.join(PROCESS_DEADLINE)
                if process.is_alive():
                    process.terminate()

        # Then every job is done, MusicBrainz never had to refuse a request, and the requests
        # it accepted were at least a second apart (less the fake's arrival jitter tolerance)
        assert [job.state for job in jobs] == [JobState.DONE] * JOBS
        assert strict.rate_limited == 0
        times = strict.accepted_times
        assert len(times) == JOBS
        gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        assert min(gaps) >= 1.0 - strict.tolerance
