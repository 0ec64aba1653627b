"""Concurrent writes to one job record lose nothing: each ``JobStore.update`` and ``reopen`` reads
and writes the record in one Lua script, so two writers (a step in one worker, the orphan check
or a requeue in another) never overwrite each other's details, attempts or history entries, and
a job that reached a final state stays there.

The writers are threads on a real Redis, each with its own connection from the client's pool,
released together by a barrier (every round, in the tests that race one write against another).
The old read-then-write ``update`` (HGETALL, then HSET) fails every one of these tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis

from soulspot_jobs.jobs.records import HISTORY_LIMIT, REQUEUED_NOTE, JobState, JobStore
from soulspot_jobs.jobs.steps import job_step

#: Threads updating one job at once, and updates each makes.
WRITERS = 8
UPDATES = 200
#: Jobs on which one write races another, one job per round.
ROUNDS = 300
#: Seconds a test waits for its writers before failing.
DEADLINE = 60.0
#: What the orphan check writes as ``last_error`` (``middleware/orphans.py``, ``_recover``).
ORPHAN_REASON = "its messages vanished: none in any queue, delay queue or dead letters for 1 s"


def _race(writers: list[Callable[[], None]]) -> None:
    """Run every writer in its own thread, released together; re-raise the first failure."""
    start = threading.Barrier(len(writers), timeout=DEADLINE)

    def released(writer: Callable[[], None]) -> None:
        start.wait()
        writer()

    with ThreadPoolExecutor(len(writers)) as pool:
        for future in [pool.submit(released, writer) for writer in writers]:
            future.result(timeout=DEADLINE)


def _race_per_round(job_ids: list[str], *writers: Callable[[str], None]) -> None:
    """For each job in turn, release every writer on it together (a barrier per round); a
    writer that fails breaks the barrier, so the others stop too and its failure is raised."""
    turn = threading.Barrier(len(writers), timeout=DEADLINE)

    def rounds(writer: Callable[[str], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                for job_id in job_ids:
                    turn.wait()
                    writer(job_id)
            except BaseException:
                turn.abort()
                raise

        return run

    _race([rounds(writer) for writer in writers])


def _search_step(store: JobStore) -> Callable[[str], None]:
    """A search step as the download actor's: the step records itself (state, service, one
    more attempt), then its search id."""

    @job_step(store, JobState.SEARCHING, "slskd-api", max_retries=3)
    def search_track(job_id: str) -> None:
        store.update(job_id, details={"search_id": f"search-of-{job_id}"})

    return search_track


def _orphan_requeue(store: JobStore) -> Callable[[str], None]:
    """The orphan check's requeue of a job it found orphaned (``OrphanCheck._recover``): it reads
    the record, then counts the requeue in the details and says why as ``last_error``."""

    def requeue(job_id: str) -> None:
        job = store.get(job_id)
        requeues = int(job.details.get("orphan_requeues", 0))
        store.update(job_id, details={"orphan_requeues": requeues + 1}, last_error=ORPHAN_REASON)

    return requeue


def test_concurrent_detail_merges_and_attempt_counts_on_one_job_lose_nothing(
    redis_client: redis.Redis,
) -> None:
    # Given one job, and 8 writers that each merge 200 detail keys of their own into it and
    # count an attempt with each
    store = JobStore(redis_client)
    job_id = store.create("download", query="A - B").id

    def writer(number: int) -> Callable[[], None]:
        def write() -> None:
            for update in range(UPDATES):
                store.update(job_id, details={f"w{number}-{update}": update}, count_attempt=True)

        return write

    # When they all update the job at once
    _race([writer(number) for number in range(WRITERS)])

    # Then every detail key is there with its value, the query with it, and every attempt counted
    job = store.get(job_id)
    expected = {f"w{n}-{u}": u for n in range(WRITERS) for u in range(UPDATES)}
    assert job.details == {"query": "A - B", **expected}
    assert job.attempts == WRITERS * UPDATES


def test_concurrent_errors_on_one_job_each_get_their_history_entry(
    redis_client: redis.Redis,
) -> None:
    """Fewer changes than the history keeps, so every one of them must be in it."""
    # Given one job, and 8 writers that each record as many new errors as the history has room
    # for when they share it (with the `created` entry)
    store = JobStore(redis_client)
    job_id = store.create("download", query="A - B").id
    per_writer = (HISTORY_LIMIT - 1) // WRITERS

    def writer(number: int) -> Callable[[], None]:
        def write() -> None:
            for update in range(per_writer):
                store.update(job_id, last_error=f"w{number}-{update}", count_attempt=True)

        return write

    # When they all update the job at once
    _race([writer(number) for number in range(WRITERS)])

    # Then the history holds the creation and each error once, each writer's in its order
    job = store.get(job_id)
    notes = [entry["note"] for entry in job.history]
    assert notes[0] == "created"
    errors = [f"w{n}-{u}" for n in range(WRITERS) for u in range(per_writer)]
    assert sorted(notes[1:]) == sorted(errors)
    for number in range(WRITERS):
        mine = [note for note in notes if note.startswith(f"w{number}-")]
        assert mine == [f"w{number}-{update}" for update in range(per_writer)]
    assert job.attempts == WRITERS * per_writer


def test_the_orphan_checks_requeue_and_a_running_step_both_land(
    redis_client: redis.Redis,
) -> None:
    """The orphan check of one worker may requeue a job while a step of it that was only slow
    runs in another; neither write may undo the other."""
    # Given jobs each about to be requeued by the orphan check, and a search step of each
    store = JobStore(redis_client)
    job_ids = [store.create("download", query=f"A - {n}").id for n in range(ROUNDS)]

    # When, job after job, the orphan check's requeue and the step start together
    _race_per_round(job_ids, _orphan_requeue(store), _search_step(store))

    # Then each job has both detail keys, the step's attempt and state, the orphan check's
    # reason, and both history entries
    for job_id in job_ids:
        job = store.get(job_id)
        assert job.details == {
            "query": job.details["query"],
            "orphan_requeues": 1,
            "search_id": f"search-of-{job_id}",
        }, job
        assert (job.state, job.service, job.attempts, job.last_error) == (
            JobState.SEARCHING,
            "slskd-api",
            1,
            ORPHAN_REASON,
        ), job
        assert len(job.history) == 3, job
        assert {entry["note"] for entry in job.history} == {"created", None, ORPHAN_REASON}, job


def test_a_job_the_orphan_check_failed_stays_failed_whatever_a_late_step_writes(
    redis_client: redis.Redis,
) -> None:
    """Once its requeues are spent, the orphan check marks a job ``failed``
    (``OrphanCheck._recover``); a step of it still running elsewhere writes ``searching`` at the
    same moment. A final state is never left: the job ends failed, its record set to expire, and
    out of the unfinished jobs the orphan check and the recovery read."""
    # Given jobs each about to be failed by the orphan check, with records kept an hour once
    # finished, and a search step of each
    store = JobStore(redis_client, ttl=3600)
    job_ids = [store.create("download", query=f"A - {n}").id for n in range(ROUNDS)]

    def fail_orphan(job_id: str) -> None:
        store.update(job_id, state=JobState.FAILED, last_error=ORPHAN_REASON)

    # When, job after job, the orphan check's failure and the step start together
    _race_per_round(job_ids, fail_orphan, _search_step(store))

    # Then every job is failed with the orphan check's reason, expires, and is not unfinished;
    # the step's own details landed either way
    for job_id in job_ids:
        job = store.get(job_id)
        assert (job.state, job.last_error) == (JobState.FAILED, ORPHAN_REASON), job
        assert job.details["search_id"] == f"search-of-{job_id}", job
        assert redis_client.pttl(store.key(job_id)) > 0, job
        assert [entry["note"] for entry in job.history].count(ORPHAN_REASON) == 1, job
    assert store.unfinished_ids() == []


def test_a_requeued_dead_letters_reopen_and_a_late_error_both_enter_the_history(
    redis_client: redis.Redis,
) -> None:
    """Requeueing a failed job's dead letter reopens its record (``JobStore.reopen``) while a
    late write of its last step (an error kept as ``last_error``) lands in another process."""
    # Given failed jobs, each about to be reopened by a requeue and to get a late error
    store = JobStore(redis_client, ttl=3600)
    job_ids = [store.create("download", query=f"A - {n}").id for n in range(ROUNDS)]
    for job_id in job_ids:
        store.update(job_id, state=JobState.FAILED, service="slskd-api", last_error="no file")

    def requeue(job_id: str) -> None:
        assert store.reopen(job_id, REQUEUED_NOTE)

    def late_error(job_id: str) -> None:
        store.update(job_id, last_error="slskd-api answered 500")

    # When, job after job, the reopen and the late error start together
    _race_per_round(job_ids, requeue, late_error)

    # Then each job is queued again, no longer expires, and its history has both entries after
    # its failure, in the order they landed
    unfinished = set(store.unfinished_ids())
    for job_id in job_ids:
        job = store.get(job_id)
        assert job.state is JobState.QUEUED, job
        assert redis_client.pttl(store.key(job_id)) == -1, job
        notes = [entry["note"] for entry in job.history]
        assert notes[:2] == ["created", "no file"], job
        assert sorted(notes[2:]) == sorted([REQUEUED_NOTE, "slskd-api answered 500"]), job
        assert job_id in unfinished, job
