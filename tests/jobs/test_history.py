"""Job records keep their history: every change of state, service or error, bounded in length."""

from __future__ import annotations

import redis

from soulspot_jobs.jobs.records import HISTORY_LIMIT, JobState, JobStore


def states(store: JobStore, job_id: str) -> list[str]:
    return [entry["state"] for entry in store.get(job_id).history]


def test_a_new_job_has_one_history_entry_saying_it_was_created(
    redis_client: redis.Redis,
) -> None:
    # Given a job store on the test Redis
    store = JobStore(redis_client)

    # When a job is created
    job = store.create("download", query="Daft Punk - Around the World")

    # Then its history holds one `queued` entry at its creation time
    assert store.get(job.id).history == [
        {"at": job.created_at, "state": "queued", "service": None, "note": "created"}
    ]


def test_each_change_of_state_service_or_error_is_appended_in_order(
    redis_client: redis.Redis,
) -> None:
    # Given a queued job
    store = JobStore(redis_client)
    job_id = store.create("download", query="A - B").id

    # When it goes through searching, a deferral, searching again, downloading, done
    store.update(job_id, state=JobState.SEARCHING, service="slskd-api")
    store.update(
        job_id, state=JobState.DEFERRED, service="slskd-api", last_error="slskd-api is OPEN"
    )
    store.update(job_id, state=JobState.SEARCHING, service="slskd-api")
    store.update(job_id, state=JobState.DOWNLOADING)
    store.update(job_id, state=JobState.ENRICHING, service="musicbrainz-api")
    store.update(job_id, state=JobState.DONE)

    # Then the history lists every step with its service, the deferral with its reason
    history = store.get(job_id).history
    assert [(e["state"], e["service"], e["note"]) for e in history] == [
        ("queued", None, "created"),
        ("searching", "slskd-api", None),
        ("deferred", "slskd-api", "slskd-api is OPEN"),
        ("searching", "slskd-api", None),
        ("downloading", "slskd-api", None),
        ("enriching", "musicbrainz-api", None),
        ("done", "musicbrainz-api", None),
    ]
    times = [entry["at"] for entry in history]
    assert times == sorted(times)


def test_updates_that_change_nothing_shown_add_no_entry(redis_client: redis.Redis) -> None:
    """A poll that sets the same state again (every few seconds while downloading) is no news."""
    # Given a downloading job
    store = JobStore(redis_client)
    job_id = store.create("download", query="A - B").id
    store.update(job_id, state=JobState.DOWNLOADING, service="slskd-api")

    # When it is polled ten times: same state, details only, attempts counted
    for percent in range(10):
        store.update(job_id, state=JobState.DOWNLOADING, details={"percent": percent})
        store.update(job_id, state=JobState.DOWNLOADING, count_attempt=True)

    # Then the history still has two entries
    assert states(store, job_id) == ["queued", "downloading"]


def test_a_new_error_is_recorded_even_without_a_change_of_state(
    redis_client: redis.Redis,
) -> None:
    """Errors that Dramatiq retries leave the state alone but belong in the history."""
    # Given a searching job
    store = JobStore(redis_client)
    job_id = store.create("download", query="A - B").id
    store.update(job_id, state=JobState.SEARCHING, service="slskd-api")

    # When an attempt fails with an error, twice with the same error
    store.update(job_id, last_error="KeyError: 'files'")
    store.update(job_id, last_error="KeyError: 'files'")

    # Then one entry carries the error as its note
    history = store.get(job_id).history
    assert len(history) == 3
    assert history[-1]["state"] == "searching"
    assert history[-1]["note"] == "KeyError: 'files'"


def test_the_history_keeps_only_the_last_entries(redis_client: redis.Redis) -> None:
    # Given a job whose state changed more often than the history keeps
    store = JobStore(redis_client)
    job_id = store.create("download", query="A - B").id
    for step in range(HISTORY_LIMIT + 20):
        state = JobState.DEFERRED if step % 2 else JobState.SEARCHING
        store.update(job_id, state=state, last_error=f"step {step}")

    # Then it holds the last HISTORY_LIMIT entries, the newest last
    history = store.get(job_id).history
    assert len(history) == HISTORY_LIMIT
    assert history[-1]["note"] == f"step {HISTORY_LIMIT + 19}"
    assert history[0]["note"] == "step 20"


def test_a_record_written_without_history_still_reads(redis_client: redis.Redis) -> None:
    """Records written before histories existed read as jobs with an empty history."""
    # Given a record whose hash has no history field (and a field this version does not know)
    store = JobStore(redis_client)
    job_id = store.create("download", query="A - B").id
    redis_client.hdel(store.key(job_id), "history")
    redis_client.hset(store.key(job_id), "future_field", '"x"')

    # When it is read and updated
    store.update(job_id, state=JobState.SEARCHING, service="slskd-api")

    # Then it reads, with the new change in its history
    assert states(store, job_id) == ["searching"]


def test_reopen_puts_a_failed_job_back_to_queued_with_the_reason_but_never_a_done_one(
    redis_client: redis.Redis,
) -> None:
    # Given a failed job and a done job
    store = JobStore(redis_client)
    failed = store.create("download", query="A - B").id
    store.update(failed, state=JobState.FAILED, last_error="no file")
    done = store.create("download", query="C - D").id
    store.update(done, state=JobState.DONE)

    # When both are reopened because their messages were requeued
    reopened = [store.reopen(job_id, "requeued") for job_id in (failed, done)]

    # Then the failed one is queued again, its history saying why; the done one stays done
    assert reopened == [True, False]
    assert store.get(failed).state is JobState.QUEUED
    assert states(store, failed) == ["queued", "failed", "queued"]
    assert store.get(failed).history[-1]["note"] == "requeued"
    assert store.get(done).state is JobState.DONE
    assert store.reopen("no-such-job", "requeued") is False
