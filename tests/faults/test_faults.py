"""The fault suite: what an operator's worst days do to the jobs, with real processes.

Each test runs ``dramatiq soulspot_jobs.worker`` commands against a real ``redis-server`` and the
fake upstreams, breaks one thing, and checks that every job still finishes, none twice over
the budget, within the time docs/crash-recovery.md promises. Run alone with ``pytest -m faults``.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from soulspot_jobs.jobs.records import JobState
from tests.faults.conftest import Figures, Stage, worker_processes
from tests.polling import wait_until

pytestmark = pytest.mark.faults

#: Seconds within which every job must be done after the fault (docs/crash-recovery.md's promise).
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
    # And slskd's breaker held OPEN for 5 s, so that the workers hold deferred messages
    breaker = stage.producer.breakers["slskd-api"]
    breaker.record_failure_sync(breaker.acquire_sync(), hold_open=5.0)
    wait_until(lambda: stage.held_by(doomed) >= 3, "messages held by the doomed worker", 20.0)

    # When one worker process is killed with its messages in flight, deferrals included
    [pid] = worker_processes(doomed)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    held = stage.held_by(doomed)  # what it took with it: left in its ack sets
    assert held > 0

    # Then the survivor finishes every job within the deadline, each exactly once
    stage.wait_all_final(job_ids, RECOVERY_DEADLINE)
    recovered_in = time.monotonic() - killed_at
    lost, duplicates = stage.lost(job_ids), stage.duplicates(job_ids)
    stage.record(
        Figures(
            "`kill -9` of a worker process",
            JOBS,
            lost,
            duplicates,
            recovered_in,
            f"it held {held} messages; heartbeat timeout 15 s (default)",
        )
    )
    assert lost == 0
    assert recovered_in < RECOVERY_DEADLINE


# -- the worker holding the only HALF_OPEN trial killed -----------------------------------------


def _trials(stage: Stage, key: str) -> dict[bytes, float]:
    client = stage.producer.broker.client
    return {
        name: float(value)
        for name, value in client.hgetall(key).items()
        if name.startswith(b"trial:")
    }


def test_a_killed_trial_holder_wedges_half_open_no_longer_than_the_trial_lease(
    stage: Stage,
) -> None:
    # Given workers whose slskd client times out after 2 s (so a trial is leased for 11 s) and
    # that count a worker dead after 5 s of silence
    stage.env.update(SLSKD_TIMEOUT="2", RECOVERY_HEARTBEAT_TIMEOUT="5")
    lease = 3 * 2 + 5
    doomed = stage.start_workers()
    # And slskd's breaker held OPEN for 1 s, and slskd answering slowly
    stage.slskd.faults.set_latency(1.5)
    job_ids = stage.enqueue_downloads(3)
    breaker = stage.producer.breakers["slskd-api"]
    breaker.record_failure_sync(breaker.acquire_sync(), hold_open=1.0)
    key = stage.producer.breakers.backend.key("slskd-api")

    # When the worker running the only HALF_OPEN trial is killed in the middle of it
    wait_until(lambda: _trials(stage, key), "a HALF_OPEN trial", 20.0)
    [pid] = worker_processes(doomed)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    [(dead_trial, lease_end)] = _trials(stage, key).items()
    stage.slskd.faults.clear()
    # And a worker is started again; no new job arrives
    stage.start_workers()

    # Then a new trial runs (or the breaker closed) no later than the dead trial's lease allows
    def unwedged() -> bool:
        trials = _trials(stage, key)
        state = stage.producer.broker.client.hget(key, "state")
        return bool(set(trials) - {dead_trial}) or state == b"closed"

    wait_until(unwedged, "a new trial", lease + 10.0)
    wedged_for = time.monotonic() - killed_at
    server_now = stage.producer.broker.client.time()
    assert server_now[0] + server_now[1] / 1e6 >= lease_end - 0.01
    assert wedged_for <= lease + 2.0, wedged_for

    # And every job is done
    stage.wait_all_final(job_ids, RECOVERY_DEADLINE)
    recovered_in = time.monotonic() - killed_at
    lost, duplicates = stage.lost(job_ids), stage.duplicates(job_ids)
    stage.record(
        Figures(
            "`kill -9` of the worker holding the only HALF_OPEN trial",
            len(job_ids),
            lost,
            duplicates,
            recovered_in,
            f"HALF_OPEN wedged {wedged_for:.1f} s (lease {lease} s)",
        )
    )
    assert lost == 0


# -- Redis restarted ----------------------------------------------------------------------------


def test_a_redis_restart_with_an_append_only_file_loses_no_job_and_needs_no_worker_restart(
    stage: Stage,
) -> None:
    # Given a worker command with two processes, busy with downloads
    workers = stage.start_workers(processes=2)
    job_ids = stage.enqueue_downloads(JOBS)
    wait_until(lambda: _in_flight(stage, job_ids) >= JOBS // 2, "jobs in flight", 20.0)

    # When Redis (append-only file on) is restarted and down for 5 s
    stage.restart_redis(down_for=5.0)
    back_at = time.monotonic()

    # Then, with the workers untouched, every job is done within the deadline
    stage.wait_all_final(job_ids, RECOVERY_DEADLINE)
    recovered_in = time.monotonic() - back_at
    assert workers.poll() is None, "the worker command must not have exited"
    lost, duplicates = stage.lost(job_ids), stage.duplicates(job_ids)
    stage.record(
        Figures(
            "Redis restarted, 5 s down, append-only file on", JOBS, lost, duplicates, recovered_in
        )
    )
    assert lost == 0
    assert recovered_in < RECOVERY_DEADLINE


@pytest.mark.parametrize(
    ("how", "fault"),
    [
        ("oom", "Redis at `maxmemory` (`noeviction`) for 8 s"),
        ("misconf", "Redis refusing writes (`MISCONF`: disk full) for 8 s"),
    ],
    ids=["out of memory", "disk full"],
)
def test_redis_refusing_writes_for_a_while_strands_no_job_and_kills_no_consumer(
    stage: Stage, how: str, fault: str
) -> None:
    # Given a worker command with two processes, busy with downloads
    workers = stage.start_workers(processes=2)
    job_ids = stage.enqueue_downloads(JOBS)
    wait_until(lambda: _in_flight(stage, job_ids) >= JOBS // 2, "jobs in flight", 20.0)

    # When Redis refuses every write for 8 s (the fault itself)
    stage.refuse_writes(how)
    # Then a producer is told so clearly
    with pytest.raises(redis.ResponseError, match="maxmemory|MISCONF"):
        stage.enqueue_downloads(1)
    time.sleep(8.0)
    # And once Redis takes writes again, with the workers untouched, every job is done
    stage.accept_writes()
    back_at = time.monotonic()
    stage.wait_all_final(job_ids, RECOVERY_DEADLINE)
    recovered_in = time.monotonic() - back_at
    assert workers.poll() is None, "the worker command must not have exited"
    lost, duplicates = stage.lost(job_ids), stage.duplicates(job_ids)
    failed = sum(1 for s in stage.states(job_ids).values() if s is JobState.FAILED)
    stage.record(Figures(fault, JOBS, lost, duplicates, recovered_in, f"{failed} failed"))
    assert lost == 0
    assert recovered_in < RECOVERY_DEADLINE
    # And no consumer thread died: Dramatiq logs an unexpected consumer error with a traceback
    # and, when the thread dies, Python's "Exception in thread"
    logs = stage.log_text()
    assert "Exception in thread" not in logs
    assert "Consumer encountered an unexpected error" not in logs


# -- an upstream outage -------------------------------------------------------------------------


def test_an_slskd_outage_defers_the_jobs_and_every_one_is_done_once_slskd_is_back(
    stage: Stage,
) -> None:
    # Given workers whose slskd breaker opens for 2 s at a time
    stage.env.update(CIRCUIT_BREAKER_SLSKD_API__TIMEOUT="2")
    stage.start_workers(processes=2)
    job_ids = stage.enqueue_downloads(JOBS)
    wait_until(lambda: _in_flight(stage, job_ids) >= JOBS // 2, "jobs in flight", 20.0)

    # When slskd refuses every connection for 5 s
    stage.slskd.faults.outage(5.0, mode="refuse")
    back_at = time.monotonic() + 5.0

    # Then the jobs are deferred, not failed, and all are done soon after slskd is back
    stage.wait_all_final(job_ids, RECOVERY_DEADLINE)
    recovered_in = time.monotonic() - back_at
    breaker = stage.producer.breakers["slskd-api"].stats
    lost, duplicates = stage.lost(job_ids), stage.duplicates(job_ids)
    stage.record(
        Figures(
            "slskd refusing connections for 5 s",
            JOBS,
            lost,
            duplicates,
            recovered_in,
            f"breaker opened; {breaker.total_rejections} calls refused, jobs deferred",
        )
    )
    assert lost == 0
    assert breaker.total_rejections > 0
