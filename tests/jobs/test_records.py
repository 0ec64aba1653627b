"""Job records against a real Redis: finished records expire, the index is trimmed lazily, and
each write is one round trip."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import redis

from soulspot_jobs.jobs.records import JobState, JobStore
from soulspot_jobs.settings import SettingsError, load_settings
from tests.polling import wait_until
from tests.redis_stats import command_calls


def test_a_record_gets_its_ttl_when_the_job_is_done_or_failed_and_not_before(
    redis_client: redis.Redis,
) -> None:
    # Given a store keeping finished records for an hour, and two jobs
    store = JobStore(redis_client, ttl=3600)
    done, failed = store.create("download"), store.create("download")

    # When they run, then one is done and the other fails
    store.update(done.id, state=JobState.SEARCHING)
    store.update(failed.id, state=JobState.DEFERRED)
    running = {job.id: redis_client.pttl(store.key(job.id)) for job in (done, failed)}
    store.update(done.id, state=JobState.DONE)
    store.update(failed.id, state=JobState.FAILED, last_error="no file")

    # Then their records had no TTL while running, and expire within the hour once finished
    assert running == {done.id: -1, failed.id: -1}
    for job in (done, failed):
        assert 3_500_000 < redis_client.pttl(store.key(job.id)) <= 3_600_000


def test_a_finishing_job_trims_the_index_of_ids_whose_record_expired(
    redis_client: redis.Redis,
) -> None:
    # Given a store with a tiny TTL that trims at every finish, and three jobs of which two
    # finished and their records expired
    store = JobStore(redis_client, ttl=0.05, trim_interval=0)
    first, second, last = (store.create("download") for _ in range(3))
    store.update(first.id, state=JobState.DONE)
    store.update(second.id, state=JobState.FAILED)
    wait_until(lambda: redis_client.exists(store.key(second.id)) == 0, "the records to expire")

    # When the last job finishes
    store.update(last.id, state=JobState.DONE)

    # Then the index holds only the last job's id
    assert [key.decode() for key in redis_client.zrange(store.index_key, 0, -1)] == [last.id]


def test_a_job_ttl_that_is_not_positive_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given SOULSPOT_JOB_TTL=0
    monkeypatch.setenv("SOULSPOT_JOB_TTL", "0")

    # When the settings are loaded, then one line names the variable and its value
    with pytest.raises(SettingsError, match=r"SOULSPOT_JOB_TTL='0'.*greater than 0"):
        load_settings()


def test_an_update_or_a_reopen_is_one_round_trip(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record is read and written by one script (``EVALSHA``), where the store used to read
    it (HGETALL) and then write it (a pipeline): two round trips."""
    # Given a job whose store has loaded its scripts into Redis and trimmed the index (it does
    # so at the first finish, then once an hour), and a count of the commands the client sends
    # (a pipeline counts once)
    store = JobStore(redis_client, ttl=3600, trim_interval=3600)
    job_id = store.create("download", query="A - B").id
    store.update(job_id, state=JobState.FAILED)
    store.reopen(job_id, "warm-up")
    sent = Counter()
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(connection: Any, command: Any, check_health: bool = True) -> None:
        sent["round trips"] += 1
        send(connection, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    redis_client.config_resetstat()

    # When it is updated as a step does, with details, failed, then reopened
    store.update(job_id, state=JobState.SEARCHING, service="slskd-api", count_attempt=True)
    store.update(job_id, details={"search_id": "s"}, last_error="slow")
    store.update(job_id, state=JobState.FAILED, last_error="no file")
    store.reopen(job_id, "requeued")

    # Then each write was one round trip, one script, with no read before it
    assert sent["round trips"] == 4 + 1  # the writes, and CONFIG RESETSTAT
    calls = command_calls(redis_client)
    assert calls["evalsha"] == 4
    assert "hgetall" not in calls
