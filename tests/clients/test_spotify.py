"""The Spotify client end to end against the fake Spotify over loopback, alone and behind the
``spotify-api`` circuit breaker shared in Redis."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
import structlog

from soulspot_jobs.circuit_breaker import CircuitBreakerError, CircuitState, RedisBackend
from soulspot_jobs.clients.spotify import (
    CircuitBreakerSpotifyClient,
    Playlist,
    SpotifyClient,
    Track,
)
from soulspot_jobs.errors import (
    NotFoundError,
    ServiceUnavailableError,
    UnauthorizedError,
    UpstreamError,
    UpstreamRequestError,
    is_service_failure,
)
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.spotify import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_USER,
    DEMO_PLAYLIST,
    Episode,
    FakeSpotify,
    LocalFile,
)
from tests.spotify_settings import spotify_settings

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


@pytest.fixture
def client(fake: FakeSpotify) -> Iterator[SpotifyClient]:
    client = SpotifyClient(spotify_settings(fake))
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
        CircuitBreakerSpotifyClient(SpotifyClient(spotify_settings(fake)), backend=backend)
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
    # Given a playlist five pages of 50 (the most /items serves) long
    fake.add_playlist("big", size=250)

    # When its tracks are listed
    tracks = client.get_playlist_tracks("big")

    # Then all 250 come back, in order, from five page requests to /items
    assert len(tracks) == 250
    assert len({track.id for track in tracks}) == 250
    assert [track.name for track in tracks] == [CATALOG[i % 5].title for i in range(250)]
    assert fake.requests.count(("GET", "/v1/playlists/big/items")) == 5
    assert ("GET", "/v1/playlists/big/tracks") not in fake.requests


def test_episodes_local_files_and_unavailable_tracks_are_skipped_and_counted(
    fake: FakeSpotify, client: SpotifyClient
):
    # Given a playlist mixing tracks with an episode, two local files and a removed track
    entries = [
        CATALOG[0],
        LocalFile("Me", "Demo tape"),
        Episode("Tech Talk", "Circuit breakers"),
        None,
        LocalFile("Me", "Rehearsal"),
        CATALOG[1],
    ]
    fake.add_playlist("mixed", entries)

    # When its items are read
    items = client.get_playlist_items("mixed")

    # Then only the tracks come back, and every other entry is counted by reason
    assert [track.id for track in items.tracks] == [CATALOG[0].spotify_id, CATALOG[1].spotify_id]
    assert items.skipped == {"local": 2, "episodes": 1, "unavailable": 1}
    assert [t.id for t in client.get_playlist_tracks("mixed")] == [t.id for t in items.tracks]


def test_entries_are_read_under_item_without_the_deprecated_track(
    fake: FakeSpotify, client: SpotifyClient
):
    # Given Spotify's /items answer with each object under "item" only (the fake's default)
    assert fake.legacy_track_field is False

    # When the playlist is read, then every track is there
    assert len(client.get_playlist_tracks(DEMO_PLAYLIST)) == len(CATALOG)


def test_entries_with_only_the_deprecated_track_field_are_read_too():
    # Given a Spotify that still lists entries under "track" alone
    class TrackFieldOnly(FakeSpotify):
        def _item(self, added_at, entry, fields):  # type: ignore[no-untyped-def]
            return super()._item(added_at, entry, ("track",))

    with TrackFieldOnly() as old:
        client = SpotifyClient(spotify_settings(old))
        try:
            # When the playlist is read
            tracks = client.get_playlist_tracks(DEMO_PLAYLIST)
        finally:
            client.close()

    # Then the tracks are found under "track"
    assert [track.id for track in tracks] == [t.spotify_id for t in CATALOG]


def test_a_playlist_comes_with_its_name_owner_tracks_and_skipped_entries(
    fake: FakeSpotify, client: SpotifyClient
):
    fake.add_playlist("road", [CATALOG[2], None], name="Road trip")

    playlist = client.get_playlist("road")

    assert playlist == Playlist(
        id="road",
        name="Road trip",
        owner_id="spotify",
        tracks=(client.get_track(CATALOG[2].spotify_id),),
        skipped={"unavailable": 1},
    )


def test_an_unknown_track_is_not_found(client: SpotifyClient):
    with pytest.raises(NotFoundError) as raised:
        client.get_track("0000000000000000000000")

    assert raised.value.status == 404


def test_a_next_page_on_another_host_is_not_followed(fake: FakeSpotify):
    # Given a Spotify whose next links point at another host
    class Redirecting(FakeSpotify):
        def _paging(self, request, items, limit, offset, fields):  # type: ignore[no-untyped-def]
            page = super()._paging(request, items, 2, offset, fields)
            page["next"] = "http://198.51.100.7/v1/playlists/big/items?offset=2&limit=2"
            return page

    with Redirecting() as other:
        client = SpotifyClient(spotify_settings(other))
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
        client = SpotifyClient(spotify_settings(fake), clock=clock)
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


def test_a_fresh_token_refused_too_blames_the_credentials_without_showing_tokens(
    fake: FakeSpotify, client: SpotifyClient
):
    """A 401 to a token the accounts service has just issued: the credentials behind it are
    wrong (or revoked), which is the settings' fault, not the job's."""
    # Given a Spotify that refuses every token, even fresh ones
    client.get_track(TRACK_ID)
    fake.token_lifetime = 0
    fake.expire_tokens()
    seen = len(fake.requests)

    # When the client calls
    with pytest.raises(UnauthorizedError) as raised:
        client.get_track(TRACK_ID)

    # Then it tried exactly once more, with one new token, and blames the settings
    assert raised.value.status == 401
    assert raised.value.variable == "SPOTIFY_CLIENT_ID/SPOTIFY_CLIENT_SECRET"
    assert fake.requests[seen:] == [TRACK_CALL, TOKEN_CALL, TRACK_CALL]
    assert fake.token_requests == 2
    # And no token appears in the message, which is Spotify's own
    assert "The access token expired" in str(raised.value)
    assert not any(token in str(raised.value) for token in fake.issued_tokens)


def test_a_wrong_secret_is_refused_without_the_secret_in_the_message(fake: FakeSpotify):
    """Spotify's accounts service answers a wrong client secret 400 ``invalid_client``
    (Spotify's Authorization guide): the settings are wrong, and the error names them."""
    secret = "very-secret-value-42"
    client = SpotifyClient(spotify_settings(fake, secret=secret))
    try:
        with pytest.raises(UnauthorizedError) as raised:
            client.get_track(TRACK_ID)
    finally:
        client.close()

    assert raised.value.status == 400
    assert raised.value.outage == "unauthorized (check SPOTIFY_CLIENT_ID/SPOTIFY_CLIENT_SECRET)"
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


# -- Spotify's error object -------------------------------------------------------------------


def test_spotifys_error_message_is_the_errors_message(client: SpotifyClient):
    with pytest.raises(NotFoundError) as raised:
        client.get_track("0000000000000000000000")

    assert str(raised.value) == (
        "spotify-api: GET /v1/tracks/0000000000000000000000 answered 404: Resource not found"
    )


# -- user tokens and the 403 of playlists an app may not read --------------------------------


def user_token(fake: FakeSpotify) -> str:
    """An access token of the fake's default user, as a caller holding one would pass it."""
    with httpx.Client(base_url=fake.url) as http:
        answer = http.post(
            "/api/token",
            data={"grant_type": "refresh_token", "refresh_token": fake.refresh_token},
            auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
        )
    return answer.json()["access_token"]


def test_an_app_token_refused_403_says_which_credential_is_needed(
    fake: FakeSpotify, client: SpotifyClient
):
    # Given a playlist only its owner may read
    fake.add_playlist("mine", [CATALOG[0]], owner=DEFAULT_USER)

    # When the client reads it with its app token
    with pytest.raises(UpstreamRequestError) as raised:
        client.get_playlist_tracks("mine")

    # Then the 403 is the job's own error, naming the credential that would work
    assert raised.value.status == 403
    assert not is_service_failure(raised.value)
    message = str(raised.value)
    assert "answered 403: Forbidden" in message
    assert "app (client-credentials) token" in message
    assert "SPOTIFY_REFRESH_TOKEN" in message
    assert not any(token in message for token in fake.issued_tokens)


def test_a_403_never_trips_the_breaker(
    fake: FakeSpotify, workers: list[CircuitBreakerSpotifyClient]
):
    # Given a guarded client and a playlist its app token may not read
    worker = workers[0]
    fake.add_playlist("mine", [CATALOG[0]], owner=DEFAULT_USER)

    # When it is refused more often than the breaker's failure threshold
    for _ in range(worker.circuit_breaker.config.failure_threshold + 1):
        with pytest.raises(UpstreamRequestError):
            worker.get_playlist_tracks("mine")

    # Then the breaker stays CLOSED
    assert worker.circuit_breaker.state is CircuitState.CLOSED


def test_a_token_passed_to_the_call_is_used_instead_of_the_clients_own(
    fake: FakeSpotify, client: SpotifyClient
):
    # Given the owner's access token, held by the caller
    fake.add_playlist("mine", [CATALOG[0], CATALOG[1]], owner=DEFAULT_USER)
    token = user_token(fake)
    requests_before = fake.token_requests

    # When the playlist is read with it
    playlist = client.get_playlist("mine", token=token)
    track = client.get_track(CATALOG[3].spotify_id, token=token)

    # Then it is served, and the client never fetched a token of its own
    assert [t.id for t in playlist.tracks] == [CATALOG[0].spotify_id, CATALOG[1].spotify_id]
    assert track.id == CATALOG[3].spotify_id
    assert fake.token_requests == requests_before


def test_an_expired_token_passed_to_the_call_is_not_replaced(
    fake: FakeSpotify, client: SpotifyClient
):
    # Given a caller's token that has expired
    token = user_token(fake)
    fake.expire_tokens()
    requests_before = fake.token_requests

    # When it is used
    with pytest.raises(UpstreamRequestError) as raised:
        client.get_track(TRACK_ID, token=token)

    # Then the 401 says to pass a fresh one; the client cannot refresh a token it does not own
    assert raised.value.status == 401
    assert "pass a fresh one" in str(raised.value)
    assert token not in str(raised.value)
    assert fake.token_requests == requests_before


def test_with_a_refresh_token_the_client_acts_as_that_user(fake: FakeSpotify):
    # Given a client configured with the owner's refresh token
    fake.add_playlist("mine", [CATALOG[0]], owner=DEFAULT_USER)
    client = SpotifyClient(spotify_settings(fake, refresh_token=fake.refresh_token))
    try:
        # When it reads the owner's playlist
        with structlog.testing.capture_logs() as logs:
            tracks = client.get_playlist_tracks("mine")
    finally:
        client.close()

    # Then it is served through a token of the refresh grant, and no token is logged
    assert [track.id for track in tracks] == [CATALOG[0].spotify_id]
    assert [entry.get("grant") for entry in logs] == ["refresh_token"]
    assert not any(token in repr(logs) for token in fake.issued_tokens)


def test_a_rotated_refresh_token_is_kept_and_used_next(fake: FakeSpotify):
    # Given an accounts service that rotates refresh tokens (the old one dies on use)
    fake.rotate_refresh_tokens = True
    client = SpotifyClient(spotify_settings(fake, refresh_token=fake.refresh_token))
    try:
        with structlog.testing.capture_logs() as logs:
            client.get_track(TRACK_ID)
            # When the access token expires and a new one is needed
            fake.expire_tokens()
            track = client.get_track(TRACK_ID)
    finally:
        client.close()

    # Then the client refreshed with the rotated token (the original would be refused)
    assert track.id == TRACK_ID
    assert fake.token_requests == 2
    events = [entry["event_name"] for entry in logs]
    assert events.count("spotify.refresh_token_rotated") == 2
    assert not any(token in repr(logs) for token in fake.issued_tokens)


def test_a_refused_refresh_token_says_to_authorize_again(fake: FakeSpotify):
    client = SpotifyClient(spotify_settings(fake, refresh_token="revoked-refresh-token"))
    try:
        with pytest.raises(UnauthorizedError) as raised:
            client.get_track(TRACK_ID)
    finally:
        client.close()

    assert raised.value.status == 400
    assert "invalid_grant: Invalid refresh token" in str(raised.value)
    assert "SPOTIFY_REFRESH_TOKEN was refused" in str(raised.value)
    assert raised.value.variable == "SPOTIFY_REFRESH_TOKEN"
    assert "revoked-refresh-token" not in str(raised.value)


# -- answers that are not the JSON promised ----------------------------------------------------


@pytest.mark.parametrize("kind", ["html", "truncated"])
def test_a_200_that_is_not_json_is_a_service_failure(
    fake: FakeSpotify, workers: list[CircuitBreakerSpotifyClient], kind: str
):
    # Given a guarded client with a token, and a proxy spoiling the next answer
    worker = workers[0]
    worker.get_track(TRACK_ID)
    fake.faults.bad_body(1, kind)

    # When the client calls
    with pytest.raises(ServiceUnavailableError) as raised:
        worker.get_track(TRACK_ID)

    # Then it is the service misbehaving: counted by the breaker, never retried as a bug
    assert is_service_failure(raised.value)
    assert "not JSON" in str(raised.value)
    assert worker.circuit_breaker.stats.failure_count == 1


def test_json_of_the_wrong_shape_is_a_service_failure(fake: FakeSpotify):
    # Given a Spotify whose playlist pages lack their items
    class Shapeless(FakeSpotify):
        def _paging(self, request, items, limit, offset, fields):  # type: ignore[no-untyped-def]
            return {"total": len(items)}

    with Shapeless() as broken:
        client = SpotifyClient(spotify_settings(broken))
        try:
            with pytest.raises(ServiceUnavailableError) as raised:
                client.get_playlist_tracks(DEMO_PLAYLIST)
        finally:
            client.close()

    assert "unexpected shape: KeyError: 'items'" in str(raised.value)
