"""The deferred-jobs index, on both implementations: what is listed, counted and forgotten."""

from __future__ import annotations

import time

import redis

from soulspot_jobs.deferral.index import (
    DeferredIndex,
    RedisDeferredIndex,
)
from tests.deferral.conftest import KEYS
from tests.deferral.conftest import job as _job
from tests.polling import wait_until


def test_an_empty_index_lists_and_counts_nothing(index: DeferredIndex) -> None:
    # Given a new index / When it is read / Then it holds nothing
    assert index.jobs() == []
    assert index.jobs("slskd-api") == []
    assert index.counts() == {}


def test_a_recorded_job_is_listed_exactly_as_recorded(index: DeferredIndex) -> None:
    # Given a deferred job
    job = _job("m1")
    # When it is recorded
    index.add(job)
    # Then it is listed, field for field, under its service and overall
    assert index.jobs() == [job]
    assert index.jobs("slskd-api") == [job]
    assert index.counts() == {"slskd-api": 1}


def test_recording_a_message_again_updates_its_entry_instead_of_adding_one(
    index: DeferredIndex,
) -> None:
    # Given a message deferred once
    index.add(_job("m1", eta=1_000, deferrals=1))
    # When it is deferred a second time
    again = _job("m1", eta=3_000, deferrals=2)
    index.add(again)
    # Then the index holds one entry, the latest one
    assert index.jobs() == [again]
    assert index.counts() == {"slskd-api": 1}


def test_jobs_are_listed_earliest_eta_first_and_filtered_by_service(
    index: DeferredIndex,
) -> None:
    # Given jobs of two services, recorded out of eta order
    late = _job("late", eta=9_000)
    early = _job("early", service="spotify-api", eta=1_000)
    middle = _job("middle", eta=5_000)
    for job in (late, early, middle):
        index.add(job)
    # When they are listed / Then earliest eta comes first, and a service sees only its own
    assert index.jobs() == [early, middle, late]
    assert index.jobs("slskd-api") == [middle, late]
    assert index.jobs("spotify-api") == [early]
    assert index.jobs("musicbrainz-api") == []
    assert index.counts() == {"slskd-api": 2, "spotify-api": 1}


def test_a_removed_job_is_forgotten_and_an_emptied_service_is_not_counted(
    index: DeferredIndex,
) -> None:
    # Given one job of each of two services
    index.add(_job("m1"))
    index.add(_job("m2", service="spotify-api"))
    # When the slskd-api job is removed, twice, and an unknown one too
    index.remove("slskd-api", "m1")
    index.remove("slskd-api", "m1")
    index.remove("musicbrainz-api", "nope")
    # Then only the spotify-api job is left, and slskd-api is not counted with zero
    assert index.jobs() == [_job("m2", service="spotify-api")]
    assert index.counts() == {"spotify-api": 1}


def test_removing_with_the_wrong_service_keeps_the_job(index: DeferredIndex) -> None:
    # Given a job deferred by slskd-api
    index.add(_job("m1"))
    # When another service's entry of the same id is removed
    index.remove("spotify-api", "m1")
    # Then the slskd-api job is still there
    assert index.counts() == {"slskd-api": 1}


def test_the_redis_index_keeps_one_hash_per_service_shared_by_every_client(
    redis_client: redis.Redis, redis_url: str
) -> None:
    # Given a Redis index written through one client
    RedisDeferredIndex(redis_client, KEYS).add(_job("m1"))
    # When another client (another worker process) reads the same prefix
    other = redis.Redis.from_url(redis_url)
    try:
        seen = RedisDeferredIndex(other, KEYS)
        # Then it sees the job, kept in the service's hash keyed by message id
        assert seen.jobs() == [_job("m1")]
        assert redis_client.hkeys(KEYS.deferred("slskd-api")) == [b"m1"]
        assert seen.key("slskd-api") == "test:deferred:slskd-api"
    finally:
        other.close()


# -- the Redis index buffers its writes off the deferral path ------------------------------------


def _in_a_minute() -> int:
    return int(time.time() * 1000) + 60_000


def _other_view(redis_url: str) -> RedisDeferredIndex:
    """The same index as another worker process sees it (its own client, nothing buffered)."""
    return RedisDeferredIndex(redis.Redis.from_url(redis_url), KEYS)


def test_a_buffered_entry_is_read_back_at_once_and_reaches_other_workers_soon(
    redis_url: str,
) -> None:
    # Given a Redis index whose entry is due in a minute (so its write is buffered)
    index = RedisDeferredIndex(redis.Redis.from_url(redis_url), KEYS, flush_interval=0.05)
    other = _other_view(redis_url)
    job = _job("m1", eta=_in_a_minute())
    try:
        # When it is recorded
        index.add(job)

        # Then the process that wrote it reads it back at once, and another worker soon
        assert index.counts() == {"slskd-api": 1}
        wait_until(lambda: other.jobs() == [job], "the buffered write to reach Redis", 5.0)
    finally:
        index.close()
        other.close()


def test_an_entry_due_soon_is_written_before_add_returns(redis_url: str) -> None:
    # Given a Redis index with a buffered entry and one whose message is due in 100 ms
    index = RedisDeferredIndex(redis.Redis.from_url(redis_url), KEYS, flush_interval=60)
    other = _other_view(redis_url)
    later, soon = _job("later", eta=_in_a_minute()), _job("soon", eta=_in_a_minute() - 59_900)
    try:
        # When both are recorded, the buffered one first
        index.add(later)
        index.add(soon)

        # Then another worker sees both right away: the urgent write carried the earlier one too
        assert {job.message_id for job in other.jobs()} == {"later", "soon"}
    finally:
        index.close()
        other.close()


def test_buffered_changes_reach_redis_in_the_order_they_were_made(redis_url: str) -> None:
    # Given a Redis index that writes only when asked
    index = RedisDeferredIndex(redis.Redis.from_url(redis_url), KEYS, flush_interval=60)
    other = _other_view(redis_url)
    try:
        # When a message is recorded, removed (it ran), then recorded again (deferred again)
        index.add(_job("m1", eta=_in_a_minute()))
        index.remove("slskd-api", "m1")
        index.add(_job("m1", eta=_in_a_minute(), deferrals=2))
        index.close()

        # Then Redis holds its latest entry
        [job] = other.jobs()
        assert job.deferrals == 2
    finally:
        other.close()
