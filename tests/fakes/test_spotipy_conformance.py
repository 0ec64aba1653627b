"""The fake Spotify driven by the real third-party client ``spotipy``: if spotipy, written
against the real Web API, reads the fake's answers as it reads Spotify's, the fake keeps the
project's own client honest.

spotipy is pointed at the fake through its public knobs: the Web API ``prefix`` and the token
managers' ``OAUTH_TOKEN_URL``; tokens are cached in memory only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import spotipy
from spotipy.cache_handler import MemoryCacheHandler
from spotipy.exceptions import SpotifyException, SpotifyOauthError
from spotipy.oauth2 import SpotifyClientCredentials, SpotifyOAuth

from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.spotify import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_USER,
    DEMO_PLAYLIST,
    FakeSpotify,
)

#: Where spotipy's OAuth manager says the user would be sent back (never visited here).
REDIRECT_URI = "http://127.0.0.1:9/callback"


@pytest.fixture
def fake() -> Iterator[FakeSpotify]:
    with FakeSpotify() as server:
        yield server  # type: ignore[misc]


def app_credentials(
    fake: FakeSpotify, secret: str = DEFAULT_CLIENT_SECRET
) -> SpotifyClientCredentials:
    manager = SpotifyClientCredentials(
        client_id=DEFAULT_CLIENT_ID,
        client_secret=secret,
        cache_handler=MemoryCacheHandler(),
        requests_timeout=5,
    )
    manager.OAUTH_TOKEN_URL = f"{fake.url}/api/token"
    return manager


def spotify(fake: FakeSpotify, **options: object) -> spotipy.Spotify:
    """spotipy on the fake; ``options`` go to ``spotipy.Spotify`` (default: app credentials)."""
    if "auth" not in options:
        options.setdefault("auth_manager", app_credentials(fake))
    client = spotipy.Spotify(requests_timeout=5, **options)  # type: ignore[arg-type]
    client.prefix = f"{fake.url}/v1/"
    return client


# -- the token flows -----------------------------------------------------------------------------


def test_spotipy_gets_an_app_token_with_client_credentials(fake: FakeSpotify) -> None:
    # When spotipy's client-credentials manager asks for a token
    token = app_credentials(fake).get_access_token(as_dict=False)

    # Then it is the fake's, and spotipy can use it
    assert token == fake.issued_tokens[-1]
    assert spotify(fake, auth=token).track(CATALOG[0].spotify_id)["id"] == CATALOG[0].spotify_id


def test_spotipy_reads_the_accounts_services_refusal(fake: FakeSpotify) -> None:
    with pytest.raises(SpotifyOauthError) as raised:
        app_credentials(fake, secret="wrong").get_access_token(as_dict=False)

    assert raised.value.error == "invalid_client"
    assert raised.value.error_description == "Invalid client"


def test_spotipy_refreshes_a_user_token_and_keeps_a_rotated_refresh_token(
    fake: FakeSpotify,
) -> None:
    # Given a user's playlist and spotipy's authorization-code manager holding a refresh token
    fake.add_playlist("3cEYpjA9oz9GiPac4AsH4n", [CATALOG[1]], owner=DEFAULT_USER)
    fake.rotate_refresh_tokens = True
    oauth = SpotifyOAuth(
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
        redirect_uri=REDIRECT_URI,
        cache_handler=MemoryCacheHandler(),
        open_browser=False,
        requests_timeout=5,
    )
    oauth.OAUTH_TOKEN_URL = f"{fake.url}/api/token"

    # When it refreshes
    token_info = oauth.refresh_access_token(fake.refresh_token)

    # Then it holds the user's token and the rotated refresh token, and reads the playlist
    assert token_info["refresh_token"] != fake.refresh_token
    assert token_info["refresh_token"] in fake.issued_tokens
    page = spotify(fake, auth=token_info["access_token"]).playlist_items("3cEYpjA9oz9GiPac4AsH4n")
    assert [entry["item"]["id"] for entry in page["items"]] == [CATALOG[1].spotify_id]


# -- playlist items and tracks -------------------------------------------------------------------


def test_spotipy_accepts_the_demo_playlist_id_and_reads_its_items(fake: FakeSpotify) -> None:
    # When spotipy reads the demo playlist (it refuses ids that are not base 62)
    page = spotify(fake).playlist_items(DEMO_PLAYLIST)

    # Then it gets the catalog, each entry's object under "item"
    assert page["total"] == len(CATALOG)
    assert [entry["item"]["id"] for entry in page["items"]] == [t.spotify_id for t in CATALOG]


def test_spotipy_follows_the_pages_of_a_playlist_with_next(fake: FakeSpotify) -> None:
    # Given a playlist of 120 tracks, and spotipy reading 50 a page (its default)
    fake.add_playlist("6LgJvl0Xdtc73RJ1mmpot0", size=120)
    client = spotify(fake)

    # When it follows every page with next()
    page = client.playlist_items("6LgJvl0Xdtc73RJ1mmpot0")
    pages = [page]
    while page["next"]:
        page = client.next(page)
        pages.append(page)

    # Then three pages hold the 120 distinct tracks, in order
    assert [len(p["items"]) for p in pages] == [50, 50, 20]
    ids = [entry["item"]["id"] for p in pages for entry in p["items"]]
    assert len(set(ids)) == 120
    assert client.next(pages[-1]) is None


def test_spotipy_reads_a_track(fake: FakeSpotify) -> None:
    track = spotify(fake).track(f"spotify:track:{CATALOG[2].spotify_id}")

    assert (track["name"], track["external_ids"]["isrc"]) == (CATALOG[2].title, CATALOG[2].isrc)
    assert track["artists"][0]["name"] == CATALOG[2].artist


# -- errors ------------------------------------------------------------------------------------


def test_spotipy_parses_a_401_for_an_unknown_token(fake: FakeSpotify) -> None:
    with pytest.raises(SpotifyException) as raised:
        spotify(fake, auth="made-up").track(CATALOG[0].spotify_id)

    assert raised.value.http_status == 401
    assert raised.value.msg.endswith("Invalid access token")


def test_spotipy_parses_a_404_for_an_unknown_track(fake: FakeSpotify) -> None:
    with pytest.raises(SpotifyException) as raised:
        spotify(fake).track("0000000000000000000000")

    assert raised.value.http_status == 404
    assert raised.value.msg.endswith("Resource not found")


def test_spotipy_parses_a_403_for_an_app_token_on_a_users_playlist(fake: FakeSpotify) -> None:
    fake.add_playlist("3cEYpjA9oz9GiPac4AsH4n", [CATALOG[1]], owner=DEFAULT_USER)

    with pytest.raises(SpotifyException) as raised:
        spotify(fake).playlist_items("3cEYpjA9oz9GiPac4AsH4n")

    assert raised.value.http_status == 403
    assert raised.value.msg.endswith("Forbidden")


def test_spotipy_parses_a_429_with_its_retry_after(fake: FakeSpotify) -> None:
    # Given spotipy without its retrying session, and a Spotify rate-limiting the next call
    client = spotify(fake, requests_session=False)
    client.track(CATALOG[0].spotify_id)
    fake.faults.rate_limit(1, 4)

    # When it calls
    with pytest.raises(SpotifyException) as raised:
        client.track(CATALOG[0].spotify_id)

    # Then it sees the 429 with Spotify's message and the Retry-After header
    assert raised.value.http_status == 429
    assert raised.value.msg.endswith("Too Many Requests")
    assert raised.value.headers["Retry-After"] == "4"


def test_spotipys_retrying_session_waits_out_the_retry_after(fake: FakeSpotify) -> None:
    # Given spotipy's default session (it retries a 429 after Retry-After), one 429 of 1 s
    client = spotify(fake)
    client.track(CATALOG[0].spotify_id)
    fake.faults.rate_limit(1, 1)
    seen = len(fake.request_times)

    # When it calls
    track = client.track(CATALOG[0].spotify_id)

    # Then it succeeds on its second try, sent no sooner than the Retry-After allowed
    assert track["id"] == CATALOG[0].spotify_id
    first, second = fake.request_times[seen:]
    assert second - first >= 0.9
