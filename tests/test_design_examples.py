"""Each example of the circuit-breaker design (docs: circuit-breaker-pattern.md), run as written.

The design's imports name the application's modules (``soulspot.infrastructure...``); here they
are this package's: ``soulspot_jobs.circuit_breaker`` for the breaker, ``soulspot_jobs.settings``
for ``Settings``, and ``soulspot_jobs.clients.aio`` for the async clients under the design's
names. Everything else is the design's code; where a test adds lines, they check what the
example promises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import httpx
import pytest

from soulspot_jobs.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    CircuitState,
    circuit_breaker,
)
from soulspot_jobs.clients.aio import (
    CircuitBreakerMusicBrainzClient,
    CircuitBreakerSlskdClient,
    CircuitBreakerSpotifyClient,
    SlskdClient,
    SpotifyClient,
)
from soulspot_jobs.errors import (
    NotFoundError,
    RetryLater,
    ServiceUnavailableError,
    UpstreamRequestError,
)
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.slskd import FakeSlskd
from soulspot_jobs.fakes.spotify import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_USER,
    FakeSpotify,
)
from soulspot_jobs.settings import Settings, SlskdSettings
from tests.spotify_settings import spotify_settings


@pytest.fixture
def settings() -> Settings:
    """The design's ``settings``: defaults (failure_threshold 5), nothing read from ``.env``."""
    return Settings(_env_file=None)


# -- Configuration: Python Configuration ------------------------------------------------------


def test_python_configuration(settings: Settings) -> None:
    # Access circuit breaker configuration
    cb_config = settings.observability.circuit_breaker

    print(f"Failure threshold: {cb_config.failure_threshold}")
    print(f"Timeout: {cb_config.timeout}s")

    assert (cb_config.failure_threshold, cb_config.timeout) == (5, 60.0)


# -- Testing: Unit Tests ------------------------------------------------------------------------


async def test_circuit_opens_after_failures():
    cb = CircuitBreaker("test", CircuitBreakerConfig(failure_threshold=3))

    async def failing_func():
        raise ValueError("error")

    # Trigger failures
    for _ in range(3):
        with pytest.raises(ValueError):
            await cb.call(failing_func)

    # Circuit should be open
    assert cb.state == CircuitState.OPEN

    # Further calls should be blocked
    with pytest.raises(CircuitBreakerError):
        await cb.call(failing_func)


# -- Testing: Integration Tests, for each wrapper, async and sync --------------------------------

#: Each wrapper with a method of its service and the arguments the design's style passes.
WRAPPED_CALLS = [
    pytest.param(CircuitBreakerSpotifyClient, "get_track", ("track-123", "token"), id="spotify"),
    pytest.param(CircuitBreakerSlskdClient, "search", ("query",), id="slskd"),
    pytest.param(
        CircuitBreakerMusicBrainzClient, "lookup_isrc", ("USRC17607839",), id="musicbrainz"
    ),
]


async def test_spotify_client_with_circuit_breaker(settings: Settings):
    mock_client = AsyncMock()
    mock_client.get_track.side_effect = Exception("API error")

    wrapper = CircuitBreakerSpotifyClient(mock_client, settings)

    # Trigger circuit opening
    for _ in range(5):
        with pytest.raises(Exception):  # noqa: B017 - the design's own check
            await wrapper.get_track("track-123", "token")

    # Circuit should block further calls
    with pytest.raises(CircuitBreakerError):
        await wrapper.get_track("track-123", "token")

    # and the client was not awaited a sixth time
    assert mock_client.get_track.await_count == 5


@pytest.mark.parametrize(("wrapper_class", "method", "args"), WRAPPED_CALLS)
async def test_each_wrapper_opens_on_an_async_clients_failures(
    settings: Settings, wrapper_class: type, method: str, args: tuple[Any, ...]
):
    # Given an async client whose method fails, behind its service's wrapper
    mock_client = AsyncMock()
    getattr(mock_client, method).side_effect = Exception("API error")
    wrapper = wrapper_class(mock_client, settings)

    # When it fails failure_threshold (5) times
    for _ in range(5):
        with pytest.raises(Exception, match="API error"):
            await getattr(wrapper, method)(*args)

    # Then the next call is refused without awaiting the client
    with pytest.raises(CircuitBreakerError) as refused:
        await getattr(wrapper, method)(*args)
    assert refused.value.service_name == wrapper_class.service
    assert getattr(mock_client, method).await_count == 5


@pytest.mark.parametrize(("wrapper_class", "method", "args"), WRAPPED_CALLS)
def test_each_wrapper_opens_on_a_sync_clients_failures(
    settings: Settings, wrapper_class: type, method: str, args: tuple[Any, ...]
):
    # Given a plain MagicMock client (sync methods) whose method fails
    mock_client = MagicMock()
    getattr(mock_client, method).side_effect = Exception("API error")
    wrapper = wrapper_class(mock_client, settings)

    # When it fails failure_threshold (5) times, called synchronously
    for _ in range(5):
        with pytest.raises(Exception, match="API error"):
            getattr(wrapper, method)(*args)

    # Then the next call is refused without calling the client
    with pytest.raises(CircuitBreakerError):
        getattr(wrapper, method)(*args)
    assert getattr(mock_client, method).call_count == 5


async def test_a_client_with_sync_and_async_methods_is_guarded_per_method(settings: Settings):
    # Given a client with an async and a sync method, sharing one wrapper (one breaker)
    mock_client = MagicMock()
    mock_client.get_track = AsyncMock(side_effect=Exception("API error"))
    mock_client.get_playlist.side_effect = Exception("API error")
    wrapper = CircuitBreakerSpotifyClient(mock_client, settings)

    # When each kind fails, the async one awaited and the sync one called
    for _ in range(3):
        with pytest.raises(Exception, match="API error"):
            await wrapper.get_track("track-123")
    for _ in range(2):
        with pytest.raises(Exception, match="API error"):
            wrapper.get_playlist("playlist")

    # Then all five failures counted on the one breaker, which now refuses both kinds
    with pytest.raises(CircuitBreakerError):
        await wrapper.get_track("track-123")
    with pytest.raises(CircuitBreakerError):
        wrapper.get_playlist("playlist")


@pytest.mark.parametrize(
    "error",
    [
        UpstreamRequestError("spotify-api", "answered 400", status=400),
        NotFoundError("spotify-api", "answered 404", status=404),
        RetryLater("spotify-api", 1.0, "busy"),
        CircuitBreakerError("slskd-api", 5.0, CircuitState.OPEN),
    ],
    ids=["request-error", "not-found", "retry-later", "other-breaker"],
)
async def test_the_callers_own_errors_and_back_pressure_count_nothing(
    settings: Settings, error: Exception
):
    # Given an async client that keeps raising an error that is not the service's failure
    mock_client = AsyncMock()
    mock_client.get_track.side_effect = error
    wrapper = CircuitBreakerSpotifyClient(mock_client, settings)

    # When it is raised more often than the failure threshold
    for _ in range(6):
        with pytest.raises(type(error)):
            await wrapper.get_track("track-123", "token")

    # Then the breaker is still CLOSED and counted no failure
    assert wrapper.circuit_breaker.state is CircuitState.CLOSED
    assert wrapper.circuit_breaker.stats.total_failures == 0


async def test_is_failure_overrides_the_classification_per_wrapper(settings: Settings):
    # Given a wrapper that counts only TimeoutError
    mock_client = AsyncMock()
    mock_client.get_track.side_effect = ValueError("a bug, not an outage")
    wrapper = CircuitBreakerSpotifyClient(
        mock_client, settings, is_failure=lambda exc: isinstance(exc, TimeoutError)
    )

    # When the client raises something else many times
    for _ in range(6):
        with pytest.raises(ValueError):
            await wrapper.get_track("track-123")

    # Then nothing counted
    assert wrapper.circuit_breaker.stats.total_failures == 0


def test_the_wrapper_takes_its_config_from_the_settings_per_service():
    # Given settings that give spotify-api its own failure threshold
    settings = Settings(
        _env_file=None,
        observability={"circuit_breaker": {"spotify_api": {"failure_threshold": 2}}},
    )

    # When the wrappers are built
    spotify = CircuitBreakerSpotifyClient(MagicMock(), settings)
    slskd = CircuitBreakerSlskdClient(MagicMock(), settings)

    # Then each breaker has its service's config
    assert spotify.circuit_breaker.config.failure_threshold == 2
    assert slskd.circuit_breaker.config.failure_threshold == 5


# -- Usage: Direct Usage ------------------------------------------------------------------------


async def test_direct_usage():
    # Create circuit breaker
    config = CircuitBreakerConfig(
        failure_threshold=3,
        success_threshold=2,
        timeout=30.0,
        reset_timeout=120.0,
    )

    circuit_breaker = CircuitBreaker(name="my-service", config=config)

    # Protect function calls
    async def call_external_api():
        # Make API call
        pass

    try:
        result = await circuit_breaker.call(call_external_api)
    except CircuitBreakerError as e:
        print(f"Circuit breaker is OPEN for {e.service_name}")
        print(f"Retry after {e.retry_after} seconds")

    assert result is None
    assert circuit_breaker.stats.total_successes == 1


async def test_direct_usage_reaches_the_except_branch_once_open():
    # Given the design's breaker, opened by three failures
    config = CircuitBreakerConfig(
        failure_threshold=3, success_threshold=2, timeout=30.0, reset_timeout=120.0
    )
    circuit_breaker = CircuitBreaker(name="my-service", config=config)

    async def broken_api():
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            await circuit_breaker.call(broken_api)

    # When the design's call is made, its except branch sees the service and the wait
    async def call_external_api():
        pass

    try:
        await circuit_breaker.call(call_external_api)
        raised = None
    except CircuitBreakerError as e:
        print(f"Circuit breaker is OPEN for {e.service_name}")
        print(f"Retry after {e.retry_after} seconds")
        raised = e

    assert raised is not None
    assert raised.service_name == "my-service"
    assert 29.0 < raised.retry_after <= 30.0


# -- Usage: Decorator Pattern -------------------------------------------------------------------


async def test_decorator_pattern():
    config = CircuitBreakerConfig(
        failure_threshold=5,
        timeout=60.0,
    )

    @circuit_breaker("my-service", config=config)
    async def fetch_data():
        # This function is automatically protected
        pass

    assert await fetch_data() is None
    assert fetch_data.circuit_breaker.stats.total_successes == 1


# -- Monitoring: Statistics and Manual Reset ----------------------------------------------------


async def test_statistics_and_manual_reset():
    # Given a breaker opened by its failures
    circuit_breaker = CircuitBreaker("my-service", CircuitBreakerConfig(failure_threshold=2))

    async def broken_api():
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await circuit_breaker.call(broken_api)

    stats = circuit_breaker.stats

    print(f"State: {stats.state}")
    print(f"Total requests: {stats.total_requests}")
    print(f"Total failures: {stats.total_failures}")
    print(f"Total successes: {stats.total_successes}")
    print(f"Current failure count: {stats.failure_count}")
    print(f"Last state change: {stats.last_state_change}")

    assert (stats.state, stats.total_failures) == (CircuitState.OPEN, 2)

    # Force circuit to CLOSED state
    await circuit_breaker.reset()

    assert circuit_breaker.state is CircuitState.CLOSED
    assert circuit_breaker.stats.total_failures == 2  # totals are kept


# -- Usage: Automatic Protection, against the fake Spotify --------------------------------------


@pytest.fixture
def fake_spotify() -> Iterator[FakeSpotify]:
    with FakeSpotify() as server:
        yield server  # type: ignore[misc]


def settings_with_spotify(fake: FakeSpotify) -> Settings:
    return Settings(_env_file=None, spotify=spotify_settings(fake))


def user_token(fake: FakeSpotify) -> str:
    """An access token of the fake's user, as the application holds one after OAuth."""
    with httpx.Client(base_url=fake.url) as http:
        answer = http.post(
            "/api/token",
            data={"grant_type": "refresh_token", "refresh_token": fake.refresh_token},
            auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
        )
    return answer.json()["access_token"]


async def test_automatic_protection(fake_spotify: FakeSpotify):
    settings = settings_with_spotify(fake_spotify)
    fake_spotify.add_playlist("my-mix", [CATALOG[0], CATALOG[1]], owner=DEFAULT_USER)
    playlist_id, token = "my-mix", user_token(fake_spotify)

    # Create base client
    base_client = SpotifyClient(settings.spotify)

    # Wrap with circuit breaker
    protected_client = CircuitBreakerSpotifyClient(base_client, settings)

    # Use normally - circuit breaker is transparent
    try:
        playlist = await protected_client.get_playlist(playlist_id, token)
    except CircuitBreakerError as e:
        # Circuit is open - service is temporarily unavailable
        print(f"Service unavailable: {e.service_name}")
        print(f"Retry after: {e.retry_after}s")

    assert [t.id for t in playlist.tracks] == [CATALOG[0].spotify_id, CATALOG[1].spotify_id]
    assert protected_client.circuit_breaker.stats.total_successes == 1
    await protected_client.aclose()


async def test_automatic_protection_once_spotify_is_down(fake_spotify: FakeSpotify):
    # Given the design's protected client, and Spotify answering 503 to everything
    settings = settings_with_spotify(fake_spotify)
    fake_spotify.add_playlist("my-mix", [CATALOG[0]], owner=DEFAULT_USER)
    playlist_id, token = "my-mix", user_token(fake_spotify)
    base_client = SpotifyClient(settings.spotify)
    protected_client = CircuitBreakerSpotifyClient(base_client, settings)
    fake_spotify.faults.outage(30, mode="503")
    for _ in range(5):
        with pytest.raises(Exception, match="503"):
            await protected_client.get_playlist(playlist_id, token)

    # When the design's call is made, its except branch runs
    unavailable = None
    try:
        playlist = await protected_client.get_playlist(playlist_id, token)
    except CircuitBreakerError as e:
        print(f"Service unavailable: {e.service_name}")
        print(f"Retry after: {e.retry_after}s")
        unavailable = e

    # Then with spotify-api and the breaker's retry_after (the 60 s timeout)
    assert unavailable is not None
    assert unavailable.service_name == "spotify-api"
    assert 59.0 < unavailable.retry_after <= 60.0
    assert "playlist" not in locals()
    await base_client.aclose()


async def test_the_async_client_awaits_without_blocking_the_loop(fake_spotify: FakeSpotify):
    # Given the async client and a slow Spotify (0.2 s per answer)
    settings = settings_with_spotify(fake_spotify)
    fake_spotify.faults.set_latency(0.2)
    async with SpotifyClient(settings.spotify) as client:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        # When a track is fetched while another task runs on the same loop
        ticker = asyncio.create_task(tick())
        track = await client.get_track(CATALOG[0].spotify_id)
        ticker.cancel()

    # Then the other task kept running meanwhile
    assert track.id == CATALOG[0].spotify_id
    assert ticks >= 10


# -- slskd: the wrapper's search, and Error Handling ---------------------------------------------

SLSKD_KEY = "slskd-key-9a4c2e7b10d35f86"


@pytest.fixture
def fake_slskd() -> Iterator[FakeSlskd]:
    with FakeSlskd(api_key=SLSKD_KEY, search_duration=0.2) as server:
        yield server  # type: ignore[misc]


def slskd_settings(fake: FakeSlskd, **breaker: Any) -> Settings:
    return Settings(
        _env_file=None,
        slskd=SlskdSettings(
            url=fake.url, api_key=SLSKD_KEY, timeout=5, search_timeout=1, search_poll_interval=0.05
        ),
        observability={"circuit_breaker": breaker},
    )


async def test_protected_slskd_search(fake_slskd: FakeSlskd):
    settings = slskd_settings(fake_slskd)
    slskd_client = SlskdClient(settings.slskd)

    result = await CircuitBreakerSlskdClient(slskd_client, settings).search("query")

    # The finished search; "query" matches no file on the fake's peers
    assert result.search.ended
    assert result.files == []
    track = CATALOG[1]
    found = await CircuitBreakerSlskdClient(slskd_client, settings).search(
        f"{track.artist} - {track.title}"
    )
    assert found.files and all(user for user, _ in found.files)
    await slskd_client.aclose()


async def test_error_handling(fake_slskd: FakeSlskd):
    # Given the protected slskd client (its breaker opening for 0.3 s) opened by an outage
    settings = slskd_settings(fake_slskd, timeout=0.3)
    protected_client = CircuitBreakerSlskdClient(SlskdClient(settings.slskd), settings)
    fake_slskd.faults.outage(0.2, mode="refuse")
    for _ in range(5):
        with pytest.raises(ServiceUnavailableError):
            await protected_client.search("query")
    logger = logging.getLogger("design-example")

    # When the design's error handling runs
    try:
        result = await protected_client.search("query")
    except CircuitBreakerError as e:
        # Circuit is open
        service_name = e.service_name  # e.g., "slskd-api"
        retry_after = e.retry_after  # seconds until retry possible

        # Log or notify user
        logger.warning(
            f"Service {service_name} temporarily unavailable. "
            f"Retry in {retry_after:.0f} seconds"
        )

        # Implement backoff strategy
        await asyncio.sleep(retry_after)

    # Then it was refused by slskd-api, and after the backoff slskd answers again
    assert service_name == "slskd-api"
    assert 0 < retry_after <= 0.3
    assert "result" not in locals()
    result = await protected_client.search("query")
    assert result.search.ended
    await protected_client.aclose()
