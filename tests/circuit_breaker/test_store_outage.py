"""When the breaker's Redis is unreachable: the configured policy, logged once per episode."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import structlog

from soulspot_jobs.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    CircuitState,
    RedisBackend,
)
from soulspot_jobs.circuit_breaker.breaker import STORE_RETRY_AFTER
from soulspot_jobs.embedded.server import EmbeddedRedis
from tests.polling import wait_until
from tests.servers import RedisKind

CALLS = 20


@pytest.fixture
def server(redis_kind: RedisKind) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own (of the run's kind), so the test can stop it."""
    with EmbeddedRedis(executable=redis_kind.executable) as own:
        yield own


def _breaker(backend: RedisBackend, policy: str) -> CircuitBreaker:
    return CircuitBreaker("svc", CircuitBreakerConfig(on_backend_error=policy), backend=backend)


def _failing_call() -> None:
    raise ConnectionError("the service is down too")


def test_an_unreachable_store_fails_open_by_default_and_is_logged_once(
    server: EmbeddedRedis,
) -> None:
    # Given a breaker whose Redis has gone away
    backend = RedisBackend.from_url(server.url, local_view=False)
    breaker = _breaker(backend, "allow")
    server.stop()
    try:
        # When calls keep coming, some of them failing
        with structlog.testing.capture_logs() as logs:
            results = [breaker.call_sync(lambda: "ran") for _ in range(CALLS)]
            with pytest.raises(ConnectionError):
                breaker.call_sync(_failing_call)

        # Then every call ran (fail open), nothing crashed, and the outage was logged once
        assert results == ["ran"] * CALLS
        outages = [e for e in logs if e.get("event_name") == "circuit_breaker.store_unavailable"]
        assert len(outages) == 1
        assert outages[0]["log_level"] == "error"
        assert outages[0]["circuit_breaker"] == "svc"
    finally:
        backend.close()


def test_an_unreachable_store_fails_closed_when_configured_to(server: EmbeddedRedis) -> None:
    # Given a breaker set to fail closed, whose Redis has gone away
    backend = RedisBackend.from_url(server.url, local_view=False)
    breaker = _breaker(backend, "reject")
    server.stop()
    ran = []
    try:
        # When a call comes
        with pytest.raises(CircuitBreakerError) as refused:
            breaker.call_sync(ran.append, 1)

        # Then it is refused without running, with the store's retry_after
        assert ran == []
        assert refused.value.retry_after == STORE_RETRY_AFTER
    finally:
        backend.close()


def test_a_store_that_comes_back_is_used_again_and_its_return_is_logged_once(
    server: EmbeddedRedis,
) -> None:
    # Given a breaker that lived through an outage of its Redis
    port = server.port
    backend = RedisBackend.from_url(server.url, local_view=False)
    backend.store_retry_interval = 0.0  # try Redis on every call, so its return is seen at once
    breaker = _breaker(backend, "allow")
    breaker.call_sync(lambda: None)
    server.stop()
    breaker.call_sync(lambda: None)
    try:
        # When Redis is back on the same port
        with (
            EmbeddedRedis(port=port, executable=server.executable),
            structlog.testing.capture_logs() as logs,
        ):
            for _ in range(3):
                breaker.call_sync(lambda: None)
            stats = breaker.stats

        # Then decisions go to Redis again, and the recovery was logged exactly once
        back = [e for e in logs if e.get("event_name") == "circuit_breaker.store_available"]
        assert len(back) == 1
        assert stats.total_successes == 3
    finally:
        backend.close()


def test_an_unreachable_store_is_tried_at_most_once_per_retry_interval(
    server: EmbeddedRedis,
) -> None:
    # Given a breaker whose Redis has gone away
    backend = RedisBackend.from_url(server.url, local_view=False)
    breaker = _breaker(backend, "allow")
    server.stop()
    attempts = []
    original = backend._call

    def counted(*args: object) -> object:
        attempts.append(args[0])
        return original(*args)

    backend._call = counted  # type: ignore[method-assign]
    try:
        # When many calls come within one retry interval
        for _ in range(CALLS):
            breaker.call_sync(lambda: None)

        # Then only the first one paid for trying the store
        assert attempts == ["admit"]
    finally:
        backend.close()


def test_an_unreachable_store_under_allow_keeps_a_breaker_of_this_processs_own(
    server: EmbeddedRedis,
) -> None:
    # Given a breaker (3 failures open it for 30 s) whose Redis has gone away, failing open
    port = server.port
    backend = RedisBackend.from_url(server.url, local_view=False)
    config = CircuitBreakerConfig(failure_threshold=3, timeout=30.0, on_backend_error="allow")
    breaker = CircuitBreaker("svc", config, backend=backend)
    backend.store_retry_interval = 0.0  # ask the store on every call, so its return is seen
    server.stop()
    ran = []
    try:
        # When its service fails 3 times meanwhile
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                with pytest.raises(ConnectionError):
                    breaker.call_sync(_failing_call)

            # Then this process's own breaker opened, with the same settings, and refuses
            with pytest.raises(CircuitBreakerError) as refused:
                breaker.call_sync(ran.append, 1)
        assert ran == []
        assert 29 < refused.value.retry_after <= 30
        stats = breaker.stats
        assert (stats.state, stats.local, stats.total_failures) == (CircuitState.OPEN, True, 3)
        (outage,) = [e for e in logs if e["event_name"] == "circuit_breaker.store_unavailable"]
        assert "deciding alone" in outage["event"] and outage["state"] == "local"
        assert [e["event_name"] for e in logs].count("circuit_breaker.opened") == 1

        # When the store is back
        with EmbeddedRedis(port=port, executable=server.executable):
            breaker.call_sync(ran.append, 2)

            # Then the shared state decides again: CLOSED there, so the call ran
            assert ran == [2]
            assert not breaker.stats.local and not breaker.standing_in
    finally:
        backend.close()


def test_a_breaker_standing_in_for_its_store_admits_nothing_from_its_view(
    server: EmbeddedRedis,
) -> None:
    # Given a breaker failing open whose local view is live, and whose store answers reads but
    # stops answering writes (CLIENT PAUSE WRITE), with replies awaited 0.2 s at most
    backend = RedisBackend(redis.Redis.from_url(server.url, socket_timeout=0.2))
    backend.store_retry_interval = 0.0  # ask the store on every call, so its return is seen
    breaker = _breaker(backend, "allow")
    admin = redis.Redis.from_url(server.url)
    try:
        breaker.record_success_sync(breaker.acquire_sync())
        wait_until(breaker.admit_from_view, timeout=5)

        # When a call's failure cannot be written, so the breaker decides alone from then on
        admin.execute_command("CLIENT", "PAUSE", 5_000, "WRITE")
        permit = breaker.acquire_sync()
        breaker.record_failure_sync(permit)

        # Then, while its view would still admit, the breaker admits nothing from it: each
        # call goes through acquire_sync and its own breaker
        assert breaker.standing_in
        assert backend.admit_from_view("svc", breaker.config)
        assert not breaker.admit_from_view()

        # When the store answers again and a call reaches it
        admin.execute_command("CLIENT", "UNPAUSE")
        breaker.record_success_sync(breaker.acquire_sync())

        # Then the view admits again
        assert not breaker.standing_in
        assert breaker.admit_from_view()
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        backend.close()
