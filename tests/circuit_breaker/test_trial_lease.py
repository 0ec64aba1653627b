"""A HALF_OPEN trial whose holder died frees its slot when its lease ends, even if no call asks
to run: every look at the breaker (a process's view refresh, ``stats``) deletes expired slots."""

from __future__ import annotations

import time

import redis

from soulspot_jobs.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    RedisBackend,
)
from soulspot_jobs.settings import TRIAL_LEASE_CALLS, TRIAL_LEASE_MARGIN, load_settings
from tests.polling import wait_until

#: Seconds of the trial lease in these tests (real time: the Redis server's clock).
LEASE = 0.5
#: Seconds between two refreshes of the surviving process's view.
REFRESH = 0.05


def _trial_fields(client: redis.Redis, key: str) -> list[bytes]:
    return [field for field in client.hkeys(key) if field.startswith(b"trial:")]


def test_a_dead_trial_holder_frees_its_slot_at_the_end_of_its_lease_without_a_new_call(
    redis_client: redis.Redis,
) -> None:
    # Given a breaker that opened and turned HALF_OPEN, shared by two processes' backends
    config = CircuitBreakerConfig(failure_threshold=1, timeout=0.05, trial_lease=LEASE)
    dead = RedisBackend(redis_client, local_view=False)
    survivor = RedisBackend(redis_client, refresh_interval=REFRESH)
    survivor_breaker = CircuitBreaker("svc", config, backend=survivor)
    try:
        survivor_breaker.record_failure_sync(survivor_breaker.acquire_sync())
        wait_until(lambda: survivor_breaker.state is CircuitState.HALF_OPEN, "HALF_OPEN", 5.0)

        # When one process takes the only trial slot and dies without reporting
        permit = CircuitBreaker("svc", config, backend=dead).acquire_sync()
        taken_at = time.monotonic()
        assert permit.token is not None
        key = survivor.key("svc")
        assert len(_trial_fields(redis_client, key)) == 1
        requests_before = int(redis_client.hget(key, "total_requests"))

        # Then the survivor's view refresh deletes the slot soon after the lease ends,
        # although no call asked to run in between
        wait_until(lambda: not _trial_fields(redis_client, key), "the expired slot", 5.0)
        freed_after = time.monotonic() - taken_at
        assert LEASE <= freed_after + 0.01 < LEASE + 10 * REFRESH, freed_after
        assert int(redis_client.hget(key, "total_requests")) == requests_before
        stats = survivor_breaker.stats
        assert (stats.state, stats.trials_in_flight) == (CircuitState.HALF_OPEN, 0)
    finally:
        survivor.close()
        dead.close()


def test_the_default_trial_lease_follows_the_services_http_timeout() -> None:
    # Given slskd's client times out after 4 s, and no lease is set
    settings = load_settings(slskd={"timeout": 4.0})
    breakers = settings.observability.circuit_breaker

    # Then slskd's breaker leases a trial for the longest step it can run, plus a margin
    assert breakers.config_for("slskd-api").trial_lease == TRIAL_LEASE_CALLS * 4.0 + (
        TRIAL_LEASE_MARGIN
    )
    # And with the 10 s default timeouts, 35 s rather than the 60 s OPEN timeout
    assert breakers.config_for("spotify-api").trial_lease == 35.0

    # When a lease is set explicitly, Then it wins
    explicit = load_settings(observability={"circuit_breaker": {"trial_lease": 12.0}})
    assert explicit.observability.circuit_breaker.config_for("slskd-api").trial_lease == 12.0
