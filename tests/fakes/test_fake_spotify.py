"""The fake Spotify speaks like the real one: token endpoint, auth errors, paging objects, 404s.

Spoken to with plain httpx over loopback, so these tests pin the wire format the client relies on.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.spotify import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEMO_PLAYLIST,
    FakeSpotify,
    LocalFile,
)

PAGING_KEYS = {"href", "items", "limit", "next", "offset", "previous", "total"}


def basic(client_id: str = DEFAULT_CLIENT_ID, secret: str = DEFAULT_CLIENT_SECRET) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


@pytest.fixture
def fake() -> Iterator[FakeSpotify]:
    with FakeSpotify() as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def http(fake: FakeSpotify) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=5) as client:
        yield client


def token_for(http: httpx.Client) -> str:
    answer = http.post(
        "/api/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic()},
    )
    assert answer.status_code == 200
    return answer.json()["access_token"]


def get(http: httpx.Client, url: str, token: str, **params: object) -> httpx.Response:
    """GET ``url`` with a bearer token; ``params`` (if any) replace the URL's own query."""
    return http.get(url, params=params or None, headers={"Authorization": f"Bearer {token}"})


# -- accounts service --------------------------------------------------------------------------


def test_valid_client_credentials_get_a_bearer_token(fake: FakeSpotify, http: httpx.Client):
    # When the client credentials are posted with HTTP Basic auth
    answer = http.post(
        "/api/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic()},
    )

    # Then a bearer token valid for an hour comes back, and the request is counted
    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["access_token"] == fake.issued_tokens[-1]
    assert fake.token_requests == 1


def test_a_wrong_secret_is_an_invalid_client(fake: FakeSpotify, http: httpx.Client):
    # When the secret is wrong
    answer = http.post(
        "/api/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic(secret="nope")},
    )

    # Then the accounts service answers 400 invalid_client, like Spotify's
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_client"
    assert fake.token_requests == 1
    assert fake.issued_tokens == []


def test_a_token_request_without_grant_type_is_refused(http: httpx.Client):
    answer = http.post("/api/token", data={}, headers={"Authorization": basic()})

    assert answer.status_code == 400
    assert answer.json()["error"] == "unsupported_grant_type"


def test_the_announced_lifetime_is_the_constructors_expires_in():
    with FakeSpotify(expires_in=5) as fake, httpx.Client(base_url=fake.url) as http:
        answer = http.post(
            "/api/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic()},
        )

    assert answer.json()["expires_in"] == 5


# -- bearer tokens on the Web API --------------------------------------------------------------


def test_the_api_refuses_a_request_without_token(http: httpx.Client):
    answer = http.get(f"/v1/playlists/{DEMO_PLAYLIST}/tracks")

    assert answer.status_code == 401
    assert answer.json() == {"error": {"status": 401, "message": "No token provided"}}


def test_the_api_refuses_a_token_it_never_issued(http: httpx.Client):
    answer = get(http, f"/v1/tracks/{CATALOG[0].spotify_id}", "made-up")

    assert answer.status_code == 401
    assert answer.json()["error"]["status"] == 401


def test_expired_tokens_are_answered_401_the_access_token_expired(
    fake: FakeSpotify, http: httpx.Client
):
    # Given a token that worked
    token = token_for(http)
    assert get(http, f"/v1/tracks/{CATALOG[0].spotify_id}", token).status_code == 200

    # When the fake expires every token issued so far
    fake.expire_tokens()
    answer = get(http, f"/v1/tracks/{CATALOG[0].spotify_id}", token)

    # Then the token is refused as expired, with the bearer challenge
    assert answer.status_code == 401
    assert answer.json() == {"error": {"status": 401, "message": "The access token expired"}}
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    # And a new token works again
    assert get(http, f"/v1/tracks/{CATALOG[0].spotify_id}", token_for(http)).status_code == 200


def test_tokens_expire_after_the_token_lifetime(fake: FakeSpotify, http: httpx.Client):
    # Given tokens the fake honours for no time at all, though it announces an hour
    fake.token_lifetime = 0

    # When a fresh token is used
    answer = get(http, f"/v1/tracks/{CATALOG[0].spotify_id}", token_for(http))

    # Then it is already expired
    assert answer.status_code == 401
    assert answer.json()["error"]["message"] == "The access token expired"


# -- playlists and tracks ----------------------------------------------------------------------


def test_the_demo_playlist_is_a_paging_object_of_the_catalog(fake: FakeSpotify, http: httpx.Client):
    answer = get(http, f"/v1/playlists/{DEMO_PLAYLIST}/tracks", token_for(http))

    assert answer.status_code == 200
    page = answer.json()
    assert set(page) == PAGING_KEYS
    assert (page["total"], page["limit"], page["offset"]) == (len(CATALOG), 100, 0)
    assert page["next"] is None and page["previous"] is None
    assert page["href"].startswith(f"{fake.url}/v1/playlists/{DEMO_PLAYLIST}/tracks?")
    first = page["items"][0]
    assert first["is_local"] is False
    assert first["added_at"].endswith("Z")
    track = first["track"]
    assert track["id"] == CATALOG[0].spotify_id
    assert track["name"] == CATALOG[0].title
    assert [artist["name"] for artist in track["artists"]] == [CATALOG[0].artist]
    assert track["album"]["name"] == CATALOG[0].album
    assert track["album"]["release_date"] == CATALOG[0].release_date
    assert track["duration_ms"] == CATALOG[0].duration_ms
    assert track["external_ids"] == {"isrc": CATALOG[0].isrc}
    assert [item["track"]["id"] for item in page["items"]] == [t.spotify_id for t in CATALOG]


def test_a_large_playlist_is_served_in_pages_linked_by_absolute_next_urls(
    fake: FakeSpotify, http: httpx.Client
):
    # Given a playlist of 250 tracks
    fake.add_playlist("big", size=250)
    token = token_for(http)

    # When the pages are followed from the first
    pages = [get(http, "/v1/playlists/big/tracks", token, limit=100).json()]
    while pages[-1]["next"] and len(pages) < 5:
        assert pages[-1]["next"].startswith(f"{fake.url}/v1/playlists/big/tracks?")
        pages.append(get(http, pages[-1]["next"], token).json())

    # Then three pages hold 100, 100 and 50 distinct tracks cycling through the catalog
    assert [len(page["items"]) for page in pages] == [100, 100, 50]
    assert [page["offset"] for page in pages] == [0, 100, 200]
    assert pages[1]["previous"] == f"{fake.url}/v1/playlists/big/tracks?offset=0&limit=100"
    tracks = [item["track"] for page in pages for item in page["items"]]
    assert len({track["id"] for track in tracks}) == 250
    assert [track["name"] for track in tracks] == [CATALOG[i % 5].title for i in range(250)]
    # And every copy can be looked up by its own id
    assert get(http, f"/v1/tracks/{tracks[-1]['id']}", token).json()["id"] == tracks[-1]["id"]


def test_limit_and_offset_are_respected(fake: FakeSpotify, http: httpx.Client):
    fake.add_playlist("big", size=30)

    page = get(http, "/v1/playlists/big/tracks", token_for(http), limit=7, offset=21).json()

    assert (page["limit"], page["offset"], page["total"]) == (7, 21, 30)
    assert len(page["items"]) == 7
    assert page["next"] == f"{fake.url}/v1/playlists/big/tracks?offset=28&limit=7"


def test_a_limit_over_100_is_a_bad_request(http: httpx.Client):
    answer = get(http, f"/v1/playlists/{DEMO_PLAYLIST}/tracks", token_for(http), limit=101)

    assert answer.status_code == 400
    assert answer.json()["error"]["status"] == 400


def test_the_items_endpoint_is_an_alias_of_tracks(fake: FakeSpotify, http: httpx.Client):
    token = token_for(http)

    items = get(http, f"/v1/playlists/{DEMO_PLAYLIST}/items", token).json()
    tracks = get(http, f"/v1/playlists/{DEMO_PLAYLIST}/tracks", token).json()

    assert items["items"] == tracks["items"]
    assert items["href"].startswith(f"{fake.url}/v1/playlists/{DEMO_PLAYLIST}/items?")


def test_local_files_and_unavailable_tracks_are_listed_like_spotify_does(
    fake: FakeSpotify, http: httpx.Client
):
    fake.add_playlist("mixed", [CATALOG[0], LocalFile("Me", "Demo tape", "Tapes", 61_000), None])

    items = get(http, "/v1/playlists/mixed/tracks", token_for(http)).json()["items"]

    assert [item["is_local"] for item in items] == [False, True, False]
    local = items[1]["track"]
    assert local["id"] is None and local["is_local"] is True
    assert local["uri"] == "spotify:local:Me:Tapes:Demo tape:61"
    assert items[2]["track"] is None


def test_a_track_is_looked_up_by_id(http: httpx.Client):
    answer = get(http, f"/v1/tracks/{CATALOG[2].spotify_id}", token_for(http))

    assert answer.status_code == 200
    assert answer.json()["external_ids"]["isrc"] == CATALOG[2].isrc


@pytest.mark.parametrize("path", ["/v1/tracks/unknown", "/v1/playlists/unknown/tracks"])
def test_unknown_ids_are_404_resource_not_found(http: httpx.Client, path: str):
    answer = get(http, path, token_for(http))

    assert answer.status_code == 404
    assert answer.json() == {"error": {"status": 404, "message": "Resource not found"}}


def test_the_rate_limit_fault_answers_429_with_retry_after(fake: FakeSpotify, http: httpx.Client):
    token = token_for(http)
    fake.faults.rate_limit(1, 4)

    limited = get(http, f"/v1/tracks/{CATALOG[0].spotify_id}", token)
    after = get(http, f"/v1/tracks/{CATALOG[0].spotify_id}", token)

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "4"
    assert after.status_code == 200
