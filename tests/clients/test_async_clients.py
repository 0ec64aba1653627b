"""The async clients end to end against the fake servers over loopback, with the same fault
controls as the sync clients' tests: same answers, same errors, same secrets handling, and waits
(tokens, rate-limit slots) that never block the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import structlog

from soulspot_jobs.circuit_breaker import CircuitBreakerError, CircuitState, RedisBackend
from soulspot_jobs.clients import slskd as slskd_module
from soulspot_jobs.clients.musicbrainz import SERVICE as MUSICBRAINZ
from soulspot_jobs.clients.musicbrainz import (
    AsyncMusicBrainzClient,
    CircuitBreakerMusicBrainzClient,
    MusicBrainzClient,
    shared_rate_limiter,
)
from soulspot_jobs.clients.slskd import AsyncSlskdClient, SlskdClient, choose_best
from soulspot_jobs.clients.spotify import (
    AsyncSpotifyClient,
    CircuitBreakerSpotifyClient,
    SpotifyClient,
)
from soulspot_jobs.errors import (
    NotFoundError,
    PeerUnavailableError,
    RetryLater,
    ServiceUnavailableError,
    UnauthorizedError,
    UpstreamRequestError,
)
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.fakes.slskd import FakeSlskd
from soulspot_jobs.fakes.spotify import (
    DEFAULT_USER,
    Episode,
    FakeSpotify,
)
from soulspot_jobs.rate_limit import RedisRateLimiter
from soulspot_jobs.settings import MusicBrainzSettings, SlskdSettings
from tests.spotify_settings import spotify_settings

TRACK = CATALOG[0]

# -- Spotify ------------------------------------------------------------------------------------


@pytest.fixture
def spotify() -> Iterator[FakeSpotify]:
    with FakeSpotify() as server:
        yield server  # type: ignore[misc]


async def test_the_async_spotify_client_reads_what_the_sync_one_reads(spotify: FakeSpotify):
    # Given a 120-track playlist with an episode in it, and both clients
    fake_tracks = [CATALOG[i % len(CATALOG)] for i in range(120)]
    spotify.add_playlist("long", [*fake_tracks[:60], Episode("show", "ep1"), *fake_tracks[60:]])
    settings = spotify_settings(spotify)
    sync_client = SpotifyClient(settings)

    # When each reads the playlist, its tracks and one track
    async with AsyncSpotifyClient(settings) as client:
        playlist = await client.get_playlist("long")
        tracks = await client.get_playlist_tracks("long")
        track = await client.get_track(TRACK.spotify_id)

    # Then the answers are the same (every page followed, the episode skipped and counted)
    assert playlist == sync_client.get_playlist("long")
    assert tracks == sync_client.get_playlist_tracks("long")
    assert track == sync_client.get_track(TRACK.spotify_id)
    assert len(tracks) == 120
    assert playlist.skipped == {"episodes": 1}
    sync_client.close()


async def test_tasks_of_one_loop_share_one_token_fetch(spotify: FakeSpotify):
    # Given the async client and slow answers (so twenty calls overlap)
    spotify.faults.set_latency(0.05)
    async with AsyncSpotifyClient(spotify_settings(spotify)) as client:
        # When twenty tasks call at once
        tracks = await asyncio.gather(
            *(client.get_track(CATALOG[i % len(CATALOG)].spotify_id) for i in range(20))
        )

    # Then one token was fetched for all of them
    assert len(tracks) == 20
    assert spotify.token_requests == 1


def test_each_event_loop_gets_its_own_token_lock(spotify: FakeSpotify):
    # Given one async client used from two event loops in turn, as two threads might
    client = AsyncSpotifyClient(spotify_settings(spotify))
    found: list[str] = []

    async def read() -> None:
        found.append((await client.get_track(TRACK.spotify_id)).id)

    # When each loop makes a call (a lock of another loop would raise here)
    for _ in range(2):
        thread = threading.Thread(target=asyncio.run, args=(read(),))
        thread.start()
        thread.join()

    # Then both calls were served, the token fetched once and reused
    assert found == [TRACK.spotify_id] * 2
    assert spotify.token_requests == 1


async def test_a_401_fetches_a_new_token_and_retries_once(spotify: FakeSpotify):
    async with AsyncSpotifyClient(spotify_settings(spotify)) as client:
        # Given a cached token that Spotify then revokes
        await client.get_track(TRACK.spotify_id)
        spotify.expire_tokens()

        # When the client calls again
        track = await client.get_track(TRACK.spotify_id)

    # Then it fetched a second token and was served
    assert track.id == TRACK.spotify_id
    assert spotify.token_requests == 2


async def test_an_app_tokens_403_names_the_credential_needed(spotify: FakeSpotify):
    # Given a playlist only its owner may read
    spotify.add_playlist("mine", [TRACK], owner=DEFAULT_USER)
    async with AsyncSpotifyClient(spotify_settings(spotify)) as client:
        # When the async client reads it with its app token
        with pytest.raises(UpstreamRequestError) as refused:
            await client.get_playlist_tracks("mine")

    # Then the 403 is the job's own error and says what would work, with no token in it
    assert refused.value.status == 403
    assert "SPOTIFY_REFRESH_TOKEN" in str(refused.value)
    assert not any(token in str(refused.value) for token in spotify.issued_tokens)


async def test_a_refresh_token_makes_the_async_client_act_as_that_user(spotify: FakeSpotify):
    # Given the user's playlist and an async client holding the user's refresh token
    spotify.add_playlist("mine", [TRACK, CATALOG[1]], owner=DEFAULT_USER)
    settings = spotify_settings(spotify, refresh_token=spotify.refresh_token)
    async with AsyncSpotifyClient(settings) as client:
        # When it reads the playlist with its own token
        tracks = await client.get_playlist_tracks("mine")

    # Then it is served as that user
    assert client.acts_as_user
    assert [t.id for t in tracks] == [TRACK.spotify_id, CATALOG[1].spotify_id]


async def test_a_wrong_secret_is_refused_without_the_secret_anywhere(spotify: FakeSpotify):
    # Given a client with a wrong secret
    secret = "not-the-secret-1234"
    async with AsyncSpotifyClient(spotify_settings(spotify, secret=secret)) as client:
        # When it calls, logging captured
        with structlog.testing.capture_logs() as logs, pytest.raises(UnauthorizedError) as e:
            await client.get_track(TRACK.spotify_id)

    # Then the refusal blames the settings and the secret is in neither message nor log
    assert e.value.status in (400, 401)
    assert e.value.variable == "SPOTIFY_CLIENT_ID/SPOTIFY_CLIENT_SECRET"
    assert secret not in str(e.value)
    assert secret not in repr(client)
    assert all(secret not in str(entry) for entry in logs)


@pytest.mark.parametrize(
    "fault",
    [
        lambda f: f.faults.outage(30, mode="503"),
        lambda f: f.faults.outage(30, mode="refuse"),
        lambda f: f.faults.fail(3, 500),
        lambda f: f.faults.bad_body(3, "html"),
    ],
    ids=["outage-503", "outage-refuse", "500", "bad-body"],
)
async def test_spotify_faults_are_service_failures(spotify: FakeSpotify, fault):
    # Given a working token, then the fault
    async with AsyncSpotifyClient(spotify_settings(spotify)) as client:
        await client.get_track(TRACK.spotify_id)
        fault(spotify)

        # When the client calls, it is the service's failure
        with pytest.raises(ServiceUnavailableError):
            await client.get_track(TRACK.spotify_id)


async def test_a_429_carries_retry_after_and_holds_the_breaker_open(
    spotify: FakeSpotify, redis_url: str
):
    # Given the async client behind the spotify-api breaker in Redis
    backend = RedisBackend.from_url(redis_url)
    client = CircuitBreakerSpotifyClient(
        AsyncSpotifyClient(spotify_settings(spotify)), backend=backend
    )
    await client.get_track(TRACK.spotify_id)
    spotify.faults.rate_limit(1, retry_after=4)

    # When Spotify answers 429 with Retry-After: 4
    with pytest.raises(ServiceUnavailableError) as limited:
        await client.get_track(TRACK.spotify_id)

    # Then the Retry-After travelled with the error and holds the breaker OPEN that long
    assert limited.value.retry_after == 4.0
    with pytest.raises(CircuitBreakerError) as refused:
        await client.get_track(TRACK.spotify_id)
    assert refused.value.retry_after > 3.0
    await client.aclose()
    backend.close()
    backend.client.close()


async def test_a_404_never_trips_the_breaker(spotify: FakeSpotify):
    # Given the guarded async client
    client = CircuitBreakerSpotifyClient(AsyncSpotifyClient(spotify_settings(spotify)))

    # When it asks for a missing track more often than the failure threshold
    for _ in range(6):
        with pytest.raises(NotFoundError):
            await client.get_track("0000000000000000000000")

    # Then the breaker is still CLOSED
    assert client.circuit_breaker.state is CircuitState.CLOSED
    await client.aclose()


# -- MusicBrainz --------------------------------------------------------------------------------


@pytest.fixture
def musicbrainz() -> Iterator[FakeMusicBrainz]:
    """A fake without its rate rule: these tests are about answers, not pace."""
    with FakeMusicBrainz(min_interval=0) as server:
        yield server  # type: ignore[misc]


def musicbrainz_settings(fake: FakeMusicBrainz, **fields: object) -> MusicBrainzSettings:
    return MusicBrainzSettings(url=fake.url, timeout=5, **fields)


async def test_the_async_musicbrainz_client_reads_what_the_sync_one_reads(
    musicbrainz: FakeMusicBrainz,
):
    # Given both clients
    settings = musicbrainz_settings(musicbrainz)
    sync_client = MusicBrainzClient(settings)

    # When each searches, looks up by mbid and by ISRC
    async with AsyncMusicBrainzClient(settings) as client:
        found = await client.search_recordings(TRACK.artist, TRACK.title, limit=5)
        recording = await client.get_recording(TRACK.mbid)
        by_isrc = await client.lookup_isrc(TRACK.isrc)

    # Then the answers are the same
    assert found == sync_client.search_recordings(TRACK.artist, TRACK.title, limit=5)
    assert recording == sync_client.get_recording(TRACK.mbid)
    assert by_isrc == sync_client.lookup_isrc(TRACK.isrc)
    assert found[0].id == TRACK.mbid
    sync_client.close()


async def test_musicbrainz_errors_are_classified_as_in_the_sync_client(
    musicbrainz: FakeMusicBrainz,
):
    async with AsyncMusicBrainzClient(musicbrainz_settings(musicbrainz)) as client:
        # An unknown id is not found; an empty search is the caller's error
        with pytest.raises(NotFoundError):
            await client.get_recording("00000000-0000-4000-8000-000000000000")
        with pytest.raises(UpstreamRequestError):
            await client.search_recordings(" ", TRACK.title)
        # An outage and a spoiled body are the service's failures
        musicbrainz.faults.bad_body(1, "truncated")
        with pytest.raises(ServiceUnavailableError, match="not JSON"):
            await client.get_recording(TRACK.mbid)
        musicbrainz.faults.outage(30, mode="refuse")
        with pytest.raises(ServiceUnavailableError):
            await client.get_recording(TRACK.mbid)


async def test_a_generic_user_agent_is_refused_as_the_jobs_own_error(
    musicbrainz: FakeMusicBrainz,
):
    settings = musicbrainz_settings(musicbrainz, app_name="python-httpx", app_version="0.28")
    async with AsyncMusicBrainzClient(settings) as client:
        with pytest.raises(UpstreamRequestError) as refused:
            await client.get_recording(TRACK.mbid)
    assert refused.value.status == 403


async def test_the_shared_limiter_paces_async_calls_without_blocking_the_loop(
    redis_client: redis.Redis,
):
    # Given MusicBrainz's rule at 0.25 s, and the async client behind the shared Redis limiter
    interval = 0.25
    with FakeMusicBrainz(min_interval=interval) as fake:
        settings = musicbrainz_settings(fake, min_interval=interval)
        limiter = shared_rate_limiter(redis_client, settings)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        # When four lookups are made at once while another task runs on the loop
        async with AsyncMusicBrainzClient(settings, limiter=limiter) as client:
            ticker = asyncio.create_task(tick())
            started = time.monotonic()
            found = await asyncio.gather(*(client.get_recording(TRACK.mbid) for _ in range(4)))
            elapsed = time.monotonic() - started
            ticker.cancel()

    # Then none was refused, they took three intervals, and the loop kept turning meanwhile
    # (about 75 ticks of 10 ms on a quiet machine; a loop blocked by the waits would see a
    # handful, during the HTTP requests only)
    assert [r.id for r in found] == [TRACK.mbid] * 4
    assert fake.rate_limited == 0
    assert elapsed >= 3 * interval - fake.tolerance
    assert ticks >= 15


async def test_a_busy_limiter_defers_the_async_call_before_anything_is_sent(
    redis_client: redis.Redis,
):
    # Given an async client whose next slot is further away than it may wait
    with FakeMusicBrainz(min_interval=0.25) as fake:
        limiter = RedisRateLimiter(redis_client, "test:mb-async", 0.25, service=MUSICBRAINZ)
        async with AsyncMusicBrainzClient(
            musicbrainz_settings(fake), limiter=limiter, max_wait=0.05
        ) as client:
            await client.get_recording(TRACK.mbid)
            # When it calls again at once
            with pytest.raises(RetryLater) as deferred:
                await client.get_recording(TRACK.mbid)

    # Then it is told to retry later and MusicBrainz never saw the second request
    assert deferred.value.service == MUSICBRAINZ
    assert len(fake.requests) == 1


async def test_a_guarded_async_musicbrainz_client_opens_on_an_outage(
    musicbrainz: FakeMusicBrainz,
):
    # Given the async client behind its wrapper, and MusicBrainz down
    client = CircuitBreakerMusicBrainzClient(
        AsyncMusicBrainzClient(musicbrainz_settings(musicbrainz))
    )
    musicbrainz.faults.outage(30, mode="503")

    # When it fails five times
    for _ in range(5):
        with pytest.raises(ServiceUnavailableError):
            await client.get_recording(TRACK.mbid)

    # Then the breaker refuses the next call
    with pytest.raises(CircuitBreakerError):
        await client.get_recording(TRACK.mbid)
    await client.aclose()


# -- slskd --------------------------------------------------------------------------------------

SLSKD_KEY = "slskd-key-5b1e0c7d93a24f68"
SLSKD_TRACK = CATALOG[1]
SLSKD_QUERY = f"{SLSKD_TRACK.artist} - {SLSKD_TRACK.title}"


@pytest.fixture
def slskd() -> Iterator[FakeSlskd]:
    with FakeSlskd(api_key=SLSKD_KEY, search_duration=0.2, transfer_duration=0.2) as server:
        yield server  # type: ignore[misc]


def slskd_settings(fake: FakeSlskd, key: str = SLSKD_KEY, **values: object) -> SlskdSettings:
    return SlskdSettings(
        url=fake.url, api_key=key, timeout=5, search_poll_interval=0.05, **values
    )


def test_search_returns_the_finished_searchs_files(slskd: FakeSlskd):
    # Given the sync client
    client = SlskdClient(slskd_settings(slskd))

    # When it searches for a catalog track
    results = client.search(SLSKD_QUERY)
    client.close()

    # Then the search has ended and its files come with the users offering them
    assert results.search.ended
    assert results.search.response_count == len(results.responses) == 4
    assert len(results.files) == results.search.file_count
    assert {user for user, _ in results.files} == {r.username for r in results.responses}


async def test_the_async_slskd_client_searches_and_downloads_as_the_sync_one(slskd: FakeSlskd):
    async with AsyncSlskdClient(slskd_settings(slskd)) as client:
        # When it searches, picks the best file, enqueues it and follows it to its end
        results = await client.search(SLSKD_QUERY)
        best = choose_best(results.responses, max_candidates=1)[0]
        transfer = await client.enqueue_download(best.username, best.filename, best.size)
        while not transfer.done:
            await asyncio.sleep(0.05)
            transfer = await client.get_transfer(transfer.username, transfer.id)

        # And the finer steps read the same search
        same = await client.get_search(results.search.id)
        responses = await client.get_responses(results.search.id)

    # Then the search ended with the fake's four peers and the download succeeded
    assert results.search.ended and same == results.search
    assert responses == list(results.responses)
    sync_client = SlskdClient(slskd_settings(slskd))
    assert best == choose_best(sync_client.get_responses(results.search.id), max_candidates=1)[0]
    sync_client.close()
    assert transfer.succeeded
    assert transfer.bytes_transferred == best.size


async def test_the_async_slskd_client_classifies_answers_as_the_sync_one(slskd: FakeSlskd):
    async with AsyncSlskdClient(slskd_settings(slskd)) as client:
        # A busy search start is back-pressure, not a failure
        slskd.busy_searches(1)
        with pytest.raises(RetryLater):
            await client.start_search(SLSKD_QUERY)
        # An offline peer is the peer's failure
        results = await client.search(SLSKD_QUERY)
        best = choose_best(results.responses, max_candidates=1)[0]
        slskd.peers_offline(best.username)
        with pytest.raises(PeerUnavailableError):
            await client.enqueue_download(best.username, best.filename, best.size)
        # An unknown search is not found
        with pytest.raises(NotFoundError):
            await client.get_search("00000000-0000-4000-8000-000000000000")
        # A spoiled body and an outage are slskd's failures
        slskd.faults.bad_body(1, "html")
        with pytest.raises(ServiceUnavailableError, match="not JSON"):
            await client.get_search(results.search.id)
        slskd.faults.outage(30, mode="refuse")
        with pytest.raises(ServiceUnavailableError):
            await client.search(SLSKD_QUERY)


async def test_a_wrong_api_key_is_refused_without_the_key_anywhere(slskd: FakeSlskd):
    wrong = "wrong-key-31c6a0f2e9d8"
    async with AsyncSlskdClient(slskd_settings(slskd, key=wrong)) as client:
        with pytest.raises(UnauthorizedError) as refused:
            await client.search(SLSKD_QUERY)
    assert refused.value.status == 401
    assert refused.value.variable == "SLSKD_API_KEY"
    assert wrong not in str(refused.value) and wrong not in repr(client)


async def test_a_search_slskd_never_ends_is_slskds_failure(monkeypatch: pytest.MonkeyPatch):
    # Given an slskd whose searches run 30 s although asked for 0.1 s, and a short grace
    monkeypatch.setattr(slskd_module, "SEARCH_END_GRACE", 0.1)
    with FakeSlskd(api_key=SLSKD_KEY, search_duration=30) as fake:
        async with AsyncSlskdClient(slskd_settings(fake, search_timeout=0.1)) as client:
            # When a search is made, then it is given up as slskd's failure, naming the wait
            with pytest.raises(ServiceUnavailableError, match="did not end within 0.2 seconds"):
                await client.search(SLSKD_QUERY)
