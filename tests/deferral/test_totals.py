"""The deferred index counts every deferral per service, for metrics, on both implementations."""

from __future__ import annotations

import redis

from soulspot_jobs.deferral.index import DeferredIndex, RedisDeferredIndex
from tests.deferral.conftest import KEYS
from tests.deferral.conftest import job as _job


def test_each_add_counts_one_deferral_of_its_service_and_removals_keep_the_count(
    index: DeferredIndex,
) -> None:
    # Given an index with no deferrals counted
    assert index.deferral_totals() == {}

    # When one message is deferred twice and another once, then both run
    index.add(_job("m1", service="slskd-api"))
    index.add(_job("m1", service="slskd-api", deferrals=2))
    index.add(_job("m2", service="musicbrainz-api"))
    index.remove("slskd-api", "m1")
    index.remove("musicbrainz-api", "m2")

    # Then nothing is deferred now, and three deferrals were counted
    assert index.counts() == {}
    assert index.deferral_totals() == {"slskd-api": 2, "musicbrainz-api": 1}


def test_deferral_totals_are_summed_over_every_process_sharing_redis(
    redis_client: redis.Redis,
) -> None:
    """Two workers' indexes write to one counter; a third process reads the sum."""
    # Given two indexes on one Redis (two worker processes)
    first = RedisDeferredIndex(redis_client, KEYS)
    second = RedisDeferredIndex(redis_client, KEYS)
    reader = RedisDeferredIndex(redis_client, KEYS)
    try:
        # When each defers a message
        first.add(_job("m1"))
        second.add(_job("m2"))
        first.close()
        second.close()

        # Then the reader sees both deferrals
        assert reader.deferral_totals() == {"slskd-api": 2}
    finally:
        reader.close()

