"""``async def`` actors on a real Worker with the circuit-breaker middleware: a client guarded by
the actor's own service passes straight through, as in sync actors, so each outcome counts once.

Dramatiq runs an async actor's coroutine on its event-loop thread; the coroutine's task starts in
a copy of the worker thread's context (``call_soon_threadsafe`` and ``create_task`` both copy the
current context), which holds the message's permit set by the middleware's hook.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dramatiq
import pytest

from soulspot_jobs.circuit_breaker import CircuitBreaker, CircuitBreakerError, CircuitState
from soulspot_jobs.clients.spotify import AsyncSpotifyClient, CircuitBreakerSpotifyClient
from soulspot_jobs.errors import ServiceUnavailableError
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.spotify import FakeSpotify
from tests.middleware.conftest import (
    DEADLINE,
    HOLD_OPEN,
    QUEUE,
    Harness,
    LogWatch,
    config,
    drain,
    force_open,
)
from tests.polling import wait_until
from tests.spotify_settings import spotify_settings

TRACK = CATALOG[0]


@pytest.fixture
def spotify() -> Iterator[FakeSpotify]:
    with FakeSpotify() as server:
        yield server  # type: ignore[misc]


class TrackReader:
    """An async ``spotify-api`` actor, ``read_track``, reading a track through the spotify-api
    wrapper on ``breaker``: the ids read go in ``found``, ``done`` is set after a read."""

    def __init__(
        self, broker: dramatiq.Broker, breaker: CircuitBreaker, spotify: FakeSpotify
    ) -> None:
        self.found: list[str] = []
        self.done = threading.Event()

        @dramatiq.actor(broker=broker, queue_name=QUEUE, service="spotify-api")
        async def read_track(track_id: str) -> None:
            async with AsyncSpotifyClient(spotify_settings(spotify)) as base:
                client = CircuitBreakerSpotifyClient(base, breaker=breaker)
                self.found.append((await client.get_track(track_id)).id)
            self.done.set()

        self.read_track = read_track


def test_an_async_actors_own_service_client_counts_a_success_once(
    harness: Harness, spotify: FakeSpotify
) -> None:
    # Given an async spotify-api actor reading a track through the spotify-api wrapper
    breaker = harness.breaker("spotify-api", config())
    broker = harness.broker(breaker)
    reader = TrackReader(broker, breaker, spotify)

    # When a worker runs one message
    reader.read_track.send(TRACK.spotify_id)
    worker = harness.start_worker(broker)
    assert reader.done.wait(DEADLINE)
    drain(broker, worker)

    # Then the track was read and the breaker counted one call, one success
    assert reader.found == [TRACK.spotify_id]
    stats = breaker.stats
    assert (stats.total_requests, stats.total_successes, stats.total_failures) == (1, 1, 0)


def test_an_async_actors_own_service_failure_counts_once(
    harness: Harness, spotify: FakeSpotify
) -> None:
    # Given a spotify-api breaker that opens at the second failure, Spotify down, and an async
    # actor calling it through the spotify-api wrapper (no retries: one attempt)
    breaker = harness.breaker("spotify-api", config(failure_threshold=2))
    broker = harness.broker(breaker)
    raised: list[BaseException] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="spotify-api", max_retries=0)
    async def read_track(track_id: str) -> None:
        async with AsyncSpotifyClient(spotify_settings(spotify)) as base:
            client = CircuitBreakerSpotifyClient(base, breaker=breaker)
            try:
                await client.get_track(track_id)
            except BaseException as exc:
                raised.append(exc)
                raise

    spotify.faults.outage(30, mode="503")

    # When a worker runs one message, which fails
    read_track.send(TRACK.spotify_id)
    worker = harness.start_worker(broker)
    drain(broker, worker)

    # Then the failure was counted once: the breaker is still CLOSED with one failure
    assert [type(exc) for exc in raised] == [ServiceUnavailableError]
    stats = breaker.stats
    assert (stats.total_failures, stats.failure_count) == (1, 1)
    assert stats.state is CircuitState.CLOSED


def test_an_async_actor_holding_the_only_trial_is_not_refused_by_its_own_client(
    harness: Harness, spotify: FakeSpotify, logs: LogWatch
) -> None:
    # Given a spotify-api breaker OPEN until its timeout, then HALF_OPEN with one trial slot
    breaker = harness.breaker(
        "spotify-api", config(timeout=HOLD_OPEN, half_open_max_calls=1, success_threshold=1)
    )
    broker = harness.broker(breaker)
    reader = TrackReader(broker, breaker, spotify)

    force_open(breaker, HOLD_OPEN)
    wait_until(lambda: breaker.state is CircuitState.HALF_OPEN, timeout=DEADLINE)

    # When the message runs as that one trial, its client calling the same breaker
    reader.read_track.send(TRACK.spotify_id)
    worker = harness.start_worker(broker)
    assert reader.done.wait(DEADLINE)
    drain(broker, worker)

    # Then the client's call passed through (no second trial asked for, nothing deferred) and
    # the trial's one success closed the breaker
    assert reader.found == [TRACK.spotify_id]
    assert logs.named("job.deferred") == []
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats.total_successes == 1
    assert broker.deferred.counts() == {}


def test_the_hold_ends_with_its_message(harness: Harness, spotify: FakeSpotify) -> None:
    # Given one worker thread, a tagged spotify-api async actor and an untagged async actor
    # calling spotify-api through its wrapper
    breaker = harness.breaker("spotify-api", config(timeout=30.0))
    broker = harness.broker(breaker)
    outcomes: list[str] = []
    done = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="spotify-api")
    async def tagged() -> None:
        outcomes.append("tagged ran")

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0)
    async def untagged() -> None:
        async with AsyncSpotifyClient(spotify_settings(spotify)) as base:
            client = CircuitBreakerSpotifyClient(base, breaker=breaker)
            try:
                await client.get_track(TRACK.spotify_id)
                outcomes.append("passed through")
            except CircuitBreakerError:
                outcomes.append("refused")
        done.set()

    # When the worker thread runs a tagged message (holding spotify-api while it runs), the
    # breaker then opens, and the same thread runs the untagged message
    tagged.send()
    worker = harness.start_worker(broker, threads=1)
    wait_until(lambda: outcomes == ["tagged ran"], timeout=DEADLINE)
    broker.join(QUEUE, timeout=int(DEADLINE * 1000))
    force_open(breaker, 30.0)
    untagged.send()
    assert done.wait(DEADLINE)
    drain(broker, worker)

    # Then the untagged actor held nothing: its guarded call met the OPEN breaker
    assert outcomes == ["tagged ran", "refused"]
