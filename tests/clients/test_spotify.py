"""The Spotify client end to end against the fake Spotify over loopback, alone and behind the
``spotify-api`` circuit breaker shared in Redis."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import structlog

from soulspot_jobs.circuit_breaker import CircuitBreakerError, CircuitState, RedisBackend
from soulspot_jobs.clients.spotify import CircuitBreakerSpotifyClient, SpotifyClient, Track
from soulspot_jobs.errors import (
    NotFoundError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamRequestError,
)
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.spotify import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEMO_PLAYLIST,
    FakeSpotify,
    LocalFile,
)
from soulspot_jobs.settings import SpotifySettings

TRACK_ID = CATALOG[0].spotify_id
TOKEN_CALL = ("POST", "/api/token")
TRACK_CALL = ("GET", f"/v1/tracks/{TRACK_ID}")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> Iterator[FakeSpotify]:
    with FakeSpotify() as server:
        yield server  # type: ignore[misc]


def settings_for(fake: FakeSpotify, secret: str = DEFAULT_CLIENT_SECRET) -> SpotifySettings:
    return SpotifySettings(
        api_url=fake.url,
        accounts_url=fake.url,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=secret,
        timeout=5,
    )


@pytest.fixture
def client(fake: FakeSpotify) -> Iterator[SpotifyClient]:
    client = SpotifyClient(settings_for(fake))
    yield client
    client.close()


@pytest.fixture
def backends(redis_url: str) -> Iterator[list[RedisBackend]]:
    """Breaker backends of two workers on the same Redis, closed after the test."""
    made = [RedisBackend.from_url(redis_url), RedisBackend.from_url(redis_url)]
    yield made
    for backend in made:
        backend.close()
        backend.client.close()


@pytest.fixture
def workers(
    fake: FakeSpotify, backends: list[RedisBackend]
) -> Iterator[list[CircuitBreakerSpotifyClient]]:
    """Two guarded clients, as two workers would hold them, sharing the breaker in Redis."""
    made = [
        CircuitBreakerSpotifyClient(SpotifyClient(settings_for(fake)), backend=backend)
        for backend in backends
    ]
    yield made
    for worker in made:
        worker.close()


# -- tracks and playlists ----------------------------------------------------------------------


def test_a_playlist_comes_back_as_tracks_in_playlist_order(client: SpotifyClient):
    tracks = client.get_playlist_tracks(DEMO_PLAYLIST)

    assert [track.id for track in tracks] == [t.spotify_id for t in CATALOG]
    assert tracks[0] == Track(
        id=CATALOG[0].spotify_id,
        name=CATALOG[0].title,
        artists=(CATALOG[0].artist,),
        album=CATALOG[0].album,
        duration_ms=CATALOG[0].duration_ms,
        isrc=CATALOG[0].isrc,
    )
    assert tracks[0].query == "Daft Punk - Around the World"


def test_a_track_is_looked_up_with_its_isrc(client: SpotifyClient):
    track = client.get_track(CATALOG[3].spotify_id)

    assert (track.name, track.isrc) == (CATALOG[3].title, CATALOG[3].isrc)


def test_every_page_of_a_250_track_playlist_is_followed(fake: FakeSpotify, client: SpotifyClient):
    # Given a playlist three pages long
    fake.add_playlist("big", size=250)

    # When its tracks are listed
    tracks = client.get_playlist_tracks("big")

    # Then all 250 come back, in order, from three page requests
    assert len(tracks) == 250
    assert len({track.id for track in tracks}) == 250
    assert [track.name for track in tracks] == [CATALOG[i % 5].title for i in range(250)]
    assert fake.requests.count(("GET", "/v1/playlists/big/tracks")) == 3


def test_local_files_and_unavailable_tracks_are_skipped(fake: FakeSpotify, client: SpotifyClient):
    fake.add_playlist("mixed", [CATALOG[0], LocalFile("Me", "Demo tape"), None, CATALOG[1]])

    tracks = client.get_playlist_tracks("mixed")

    assert [track.id for track in tracks] == [CATALOG[0].spotify_id, CATALOG[1].spotify_id]


def test_an_unknown_track_is_not_found(client: SpotifyClient):
    with pytest.raises(NotFoundError) as raised:
        client.get_track("0000000000000000000000")

    assert raised.value.status == 404


def test_a_next_page_on_another_host_is_not_followed(fake: FakeSpotify):
    # Given a Spotify whose next links point at another host
    class Redirecting(FakeSpotify):
        def _paging(self, path, items, limit, offset):  # type: ignore[no-untyped-def]
            page = super()._paging(path, items, 2, offset)
            page["next"] = "http://198.51.100.7/v1/playlists/big/tracks?offset=2&limit=2"
            return page

    with Redirecting() as other:
        client = SpotifyClient(settings_for(other))
        try:
            # When the playlist is listed
            with pytest.raises(UpstreamError) as raised:
                client.get_playlist_tracks(DEMO_PLAYLIST)
        finally:
            client.close()

    # Then the client refuses to send its token there, and says why
    assert "another host" in str(raised.value)
    assert not isinstance(raised.value, ServiceUnavailableError)


# -- the access token --------------------------------------------------------------------------


def test_one_token_is_fetched_and_reused_across_calls(fake: FakeSpotify, client: SpotifyClient):
    client.get_playlist_tracks(DEMO_PLAYLIST)
    client.get_track(TRACK_ID)
    client.get_track(CATALOG[1].spotify_id)

    assert fake.token_requests == 1


def test_logs_tell_of_new_tokens_without_showing_them(fake: FakeSpotify, client: SpotifyClient):
    with structlog.testing.capture_logs() as logs:
        client.get_track(TRACK_ID)

    assert [entry["event_name"] for entry in logs] == ["spotify.token_obtained"]
    assert not any(token in repr(logs) for token in fake.issued_tokens)
    assert DEFAULT_CLIENT_SECRET not in repr(logs)


def test_threads_sharing_a_client_fetch_one_token(fake: FakeSpotify, client: SpotifyClient):
    # Given four worker threads that call at the same moment on a client without a token
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def work() -> None:
        start.wait()
        try:
            client.get_track(TRACK_ID)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then they all succeed with the one token fetched
    assert errors == []
    assert fake.token_requests == 1


def test_a_token_is_replaced_shortly_before_it_expires():
    # Given a Spotify handing out one-minute tokens and a client on a clock the test moves
    clock = FakeClock()
    with FakeSpotify(expires_in=60) as fake:
        client = SpotifyClient(settings_for(fake), clock=clock)
        try:
            client.get_track(TRACK_ID)

            # When 50 s pass, the token is still used
            clock.now += 50
            client.get_track(TRACK_ID)
            assert fake.token_requests == 1

            # When it is about to expire, a new one is fetched before the call
            clock.now += 5
            client.get_track(TRACK_ID)
        finally:
            client.close()

    # Then no request was ever refused: two tokens, three calls, no 401 retry
    assert fake.token_requests == 2
    assert fake.requests.count(TRACK_CALL) == 3


def test_a_401_fetches_a_new_token_and_retries_once(fake: FakeSpotify, client: SpotifyClient):
    # Given a client whose token Spotify no longer accepts
    client.get_track(TRACK_ID)
    fake.expire_tokens()
    seen = len(fake.requests)

    # When it calls again
    track = client.get_track(TRACK_ID)

    # Then the refused call is retried once, with a new token
    assert track.id == TRACK_ID
    assert fake.requests[seen:] == [TRACK_CALL, TOKEN_CALL, TRACK_CALL]
    assert fake.token_requests == 2


def test_a_second_401_is_an_upstream_request_error_without_tokens(
    fake: FakeSpotify, client: SpotifyClient
):
    # Given a Spotify that refuses every token, even fresh ones
    client.get_track(TRACK_ID)
    fake.token_lifetime = 0
    fake.expire_tokens()
    seen = len(fake.requests)

    # When the client calls
    with pytest.raises(UpstreamRequestError) as raised:
        client.get_track(TRACK_ID)

    # Then it tried exactly once more, with one new token, and gives up
    assert raised.value.status == 401
    assert fake.requests[seen:] == [TRACK_CALL, TOKEN_CALL, TRACK_CALL]
    # And no token appears in the message
    assert len(fake.issued_tokens) == 2
    assert not any(token in str(raised.value) for token in fake.issued_tokens)


def test_a_wrong_secret_is_refused_without_the_secret_in_the_message(fake: FakeSpotify):
    secret = "very-secret-value-42"
    client = SpotifyClient(settings_for(fake, secret=secret))
    try:
        with pytest.raises(UpstreamRequestError) as raised:
            client.get_track(TRACK_ID)
    finally:
        client.close()

    assert raised.value.status == 400
    assert "invalid_client" in str(raised.value)
    assert secret not in str(raised.value)
    assert secret not in repr(raised.value)
    assert fake.requests == [TOKEN_CALL]


# -- rate limits and the circuit breaker -------------------------------------------------------


def test_a_429_carries_the_retry_after_of_the_header(fake: FakeSpotify, client: SpotifyClient):
    client.get_track(TRACK_ID)
    fake.faults.rate_limit(1, 7)

    with pytest.raises(ServiceUnavailableError) as raised:
        client.get_track(TRACK_ID)

    assert raised.value.status == 429
    assert raised.value.retry_after == 7.0


def test_a_retry_after_opens_the_breaker_for_every_worker(
    fake: FakeSpotify, workers: list[CircuitBreakerSpotifyClient]
):
    # Given two workers, each with its own backend on the same Redis, and a breaker that
    # would need five failures in a row to open
    first, second = workers
    assert first.circuit_breaker.name == "spotify-api"
    assert first.circuit_breaker.config.failure_threshold == 5
    first.get_track(TRACK_ID)

    # When Spotify rate-limits the first worker for 3 seconds
    fake.faults.rate_limit(1, 3)
    with pytest.raises(ServiceUnavailableError) as limited:
        first.get_track(TRACK_ID)
    assert limited.value.retry_after == 3.0
    seen = len(fake.requests)

    # Then the second worker's next call is refused for about those 3 seconds
    with pytest.raises(CircuitBreakerError) as blocked:
        second.get_track(TRACK_ID)
    assert blocked.value.service_name == "spotify-api"
    assert 2.5 < blocked.value.retry_after <= 3.0
    # And Spotify never saw it
    assert len(fake.requests) == seen
    assert second.circuit_breaker.state is CircuitState.OPEN


def test_a_404_never_trips_the_breaker(
    fake: FakeSpotify, workers: list[CircuitBreakerSpotifyClient]
):
    # Given a guarded client
    worker = workers[0]

    # When more unknown tracks are asked for than the breaker's failure threshold
    for _ in range(worker.circuit_breaker.config.failure_threshold + 1):
        with pytest.raises(NotFoundError):
            worker.get_track("0000000000000000000000")

    # Then the breaker stays CLOSED and the next call reaches Spotify
    assert worker.circuit_breaker.state is CircuitState.CLOSED
    assert worker.get_track(TRACK_ID).id == TRACK_ID
