"""The fault suite: what an operator's worst days do to the jobs, with real processes.

Each test runs ``dramatiq soulspot_jobs.worker`` commands against a real ``redis-server`` and the
fake upstreams, breaks one thing, and checks that every job still finishes, none twice over
the budget, within the time the README promises. Run alone with ``pytest -m faults``.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from soulspot_jobs.jobs import FINAL_STATES, JobState
from tests.faults.conftest import Figures, Stage, worker_processes
from tests.polling import wait_until

pytestmark = pytest.mark.faults

#: Seconds within which every job must be done after the fault (the README's promise).
RECOVERY_DEADLINE = 60.0
#: Jobs per test.
JOBS = 20


def _in_flight(stage: Stage, job_ids: list[str]) -> int:
    active = {JobState.SEARCHING, JobState.DOWNLOADING, JobState.ENRICHING, JobState.DEFERRED}
    return sum(1 for state in stage.states(job_ids).values() if state in active)


# -- a worker process killed ------------------------------------------------------------------


def test_a_killed_workers_jobs_are_all_done_within_a_minute_by_the_surviving_worker(
    stage: Stage,
) -> None:
    # Given two worker commands (two hosts, say) sharing the downloads
    doomed = stage.start_workers()
    stage.start_workers()
    job_ids = stage.enqueue_downloads(JOBS)
    wait_until(lambda: _in_flight(stage, job_ids) >= JOBS // 2, "jobs in flight", 20.0)

    # When one worker process is killed with its messages in flight, delayed polls included
    [pid] = worker_processes(doomed)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    # Then the survivor finishes every job within the deadline, each exactly once
    stage.wait_all_final(job_ids, RECOVERY_DEADLINE)
    recovered_in = time.monotonic() - killed_at
    lost, duplicates = stage.lost(job_ids), stage.duplicates(job_ids)
    stage.record(Figures("`kill -9` of a worker process", JOBS, lost, duplicates, recovered_in))
    assert lost == 0
    assert recovered_in < RECOVERY_DEADLINE
