"""Work in progress goes first: first steps on ``jobs.new``, every later step on ``default``."""

from __future__ import annotations

import threading

import dramatiq
from dramatiq.middleware import Middleware

from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.queues import NEW_JOBS_QUEUE, STEPS_QUEUE
from soulspot_jobs.jobs.records import JobState
from tests.jobs.conftest import Fakes, finished, running, settings_for

#: New download jobs waiting when the worker starts (20,000 in the load bench).
BACKLOG = 2_000
#: Longest the first job may take to be done, in seconds.
FIRST_DONE_DEADLINE = 30.0


class StepsSeen(Middleware):
    """Records which queue each actor's messages came from, and the progress of the backlog at
    the moment the first job was done."""

    def __init__(self, app: SoulspotJobs) -> None:
        self.app = app
        self.queues: set[tuple[str, str]] = set()
        self.first_steps_run = 0
        self.first_steps_at_first_done: int | None = None
        self.first_done = threading.Event()
        self._lock = threading.Lock()

    def after_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.Message, *, result=None, exception=None
    ) -> None:
        done = (
            message.actor_name == "enrich_metadata"
            and self.app.job(message.args[0]).state is JobState.DONE
        )
        with self._lock:
            self.queues.add((message.actor_name, message.queue_name))
            if message.queue_name == NEW_JOBS_QUEUE:
                self.first_steps_run += 1
            if done and not self.first_done.is_set():
                self.first_steps_at_first_done = self.first_steps_run
                self.first_done.set()


def test_a_jobs_first_step_goes_to_the_new_jobs_queue_and_every_later_step_to_the_steps_queue(
    redis_url: str, fakes: Fakes
) -> None:
    # Given the jobs app with a middleware noting each message's queue
    app = SoulspotJobs(settings_for(redis_url, fakes))
    seen = StepsSeen(app)
    app.broker.add_middleware(seen)

    # When one download job runs to the end on a real worker
    with running(app) as worker:
        consumed = set(worker.consumers)
        job_id = app.enqueue_download(f"{CATALOG[0].artist} - {CATALOG[0].title}")
        [job] = finished(app, [job_id])

    # Then the worker consumed both queues, the search started from jobs.new, and its polls,
    # the download polls and the enrichment came from the steps queue
    assert job.state is JobState.DONE, job
    assert {NEW_JOBS_QUEUE, STEPS_QUEUE} <= consumed
    assert seen.queues == {
        ("search_track", NEW_JOBS_QUEUE),
        ("search_track", STEPS_QUEUE),
        ("poll_download", STEPS_QUEUE),
        ("enrich_metadata", STEPS_QUEUE),
    }


def test_with_a_backlog_of_new_jobs_the_first_job_is_done_before_the_backlog_drains(
    redis_url: str, fakes: Fakes
) -> None:
    # Given a backlog of 2,000 new download jobs queued before any worker runs
    app = SoulspotJobs(settings_for(redis_url, fakes))
    seen = StepsSeen(app)
    app.broker.add_middleware(seen)
    tracks = [f"{track.artist} - {track.title}" for track in CATALOG]
    for number in range(BACKLOG):
        app.enqueue_download(tracks[number % len(tracks)])

    # When a real worker starts on it
    with running(app):
        first_done = seen.first_done.wait(FIRST_DONE_DEADLINE)

    # Then a job went through its whole chain (search polls, download polls, enrichment) while
    # most of the backlog had not even started: its later steps did not queue behind the backlog
    assert first_done, f"no job done within {FIRST_DONE_DEADLINE} s"
    assert seen.first_steps_at_first_done is not None
    assert seen.first_steps_at_first_done < BACKLOG / 2, seen.first_steps_at_first_done
