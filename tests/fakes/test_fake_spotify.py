"""The fake Spotify speaks like the real one: token endpoint, auth errors, paging objects, 404s.

Spoken to with plain httpx over loopback, so these tests pin the wire format the client relies on
(the shapes of Spotify's OpenAPI definition); ``test_spotipy_conformance.py`` drives it with the
real ``spotipy`` client.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import httpx
import pytest

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
    assert fake.issued_tokens == [fake.refresh_token]


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


def test_the_demo_playlist_id_is_a_valid_spotify_id():
    assert re.fullmatch(r"[0-9A-Za-z]{22}", DEMO_PLAYLIST)


def test_the_demo_playlist_is_a_paging_object_of_the_catalog(fake: FakeSpotify, http: httpx.Client):
    answer = get(http, f"/v1/playlists/{DEMO_PLAYLIST}/items", token_for(http), limit=50)

    assert answer.status_code == 200
    page = answer.json()
    assert set(page) == PAGING_KEYS
    assert (page["total"], page["limit"], page["offset"]) == (len(CATALOG), 50, 0)
    assert page["next"] is None and page["previous"] is None
    assert page["href"].startswith(f"{fake.url}/v1/playlists/{DEMO_PLAYLIST}/items?")
    first = page["items"][0]
    assert first["is_local"] is False
    assert first["added_at"].endswith("Z")
    # The entry's object is under "item"; the deprecated "track" is left out
    assert "track" not in first
    track = first["item"]
    assert track["id"] == CATALOG[0].spotify_id
    assert track["name"] == CATALOG[0].title
    assert [artist["name"] for artist in track["artists"]] == [CATALOG[0].artist]
    assert track["album"]["name"] == CATALOG[0].album
    assert track["album"]["release_date"] == CATALOG[0].release_date
    assert track["duration_ms"] == CATALOG[0].duration_ms
    assert track["external_ids"] == {"isrc": CATALOG[0].isrc}
    assert [item["item"]["id"] for item in page["items"]] == [t.spotify_id for t in CATALOG]


def test_a_page_is_20_entries_unless_a_limit_is_given(fake: FakeSpotify, http: httpx.Client):
    fake.add_playlist("big", size=30)

    page = get(http, "/v1/playlists/big/items", token_for(http)).json()

    assert (page["limit"], len(page["items"])) == (20, 20)


def test_items_serves_at_most_50_a_page_and_the_deprecated_tracks_100(http: httpx.Client):
    token = token_for(http)

    too_many = get(http, f"/v1/playlists/{DEMO_PLAYLIST}/items", token, limit=51)
    legacy = get(http, f"/v1/playlists/{DEMO_PLAYLIST}/tracks", token, limit=100)

    assert too_many.status_code == 400
    assert too_many.json() == {"error": {"status": 400, "message": "Invalid limit"}}
    assert legacy.status_code == 200


def test_a_large_playlist_is_served_in_pages_linked_by_absolute_next_urls(
    fake: FakeSpotify, http: httpx.Client
):
    # Given a playlist of 250 tracks
    fake.add_playlist("big", size=250)
    token = token_for(http)

    # When the pages are followed from the first
    first = get(http, "/v1/playlists/big/items", token, limit=50, additional_types="track,episode")
    pages = [first.json()]
    while pages[-1]["next"] and len(pages) < 10:
        assert pages[-1]["next"].startswith(f"{fake.url}/v1/playlists/big/items?")
        pages.append(get(http, pages[-1]["next"], token).json())

    # Then five pages hold 50 distinct tracks each, cycling through the catalog
    assert [len(page["items"]) for page in pages] == [50] * 5
    assert [page["offset"] for page in pages] == [0, 50, 100, 150, 200]
    # And the links keep the request's other parameters
    assert pages[1]["previous"] == (
        f"{fake.url}/v1/playlists/big/items?offset=0&limit=50&additional_types=track%2Cepisode"
    )
    tracks = [item["item"] for page in pages for item in page["items"]]
    assert len({track["id"] for track in tracks}) == 250
    assert [track["name"] for track in tracks] == [CATALOG[i % 5].title for i in range(250)]
    # And every copy can be looked up by its own id
    assert get(http, f"/v1/tracks/{tracks[-1]['id']}", token).json()["id"] == tracks[-1]["id"]


def test_limit_and_offset_are_respected(fake: FakeSpotify, http: httpx.Client):
    fake.add_playlist("big", size=30)

    page = get(http, "/v1/playlists/big/items", token_for(http), limit=7, offset=21).json()

    assert (page["limit"], page["offset"], page["total"]) == (7, 21, 30)
    assert len(page["items"]) == 7
    assert page["next"] == f"{fake.url}/v1/playlists/big/items?offset=28&limit=7"


def test_a_limit_over_100_is_a_bad_request(http: httpx.Client):
    answer = get(http, f"/v1/playlists/{DEMO_PLAYLIST}/tracks", token_for(http), limit=101)

    assert answer.status_code == 400
    assert answer.json()["error"]["status"] == 400


def test_items_lists_objects_under_item_and_the_deprecated_tracks_under_track(
    fake: FakeSpotify, http: httpx.Client
):
    token = token_for(http)

    items = get(http, f"/v1/playlists/{DEMO_PLAYLIST}/items", token).json()["items"]
    tracks = get(http, f"/v1/playlists/{DEMO_PLAYLIST}/tracks", token).json()["items"]
    fake.legacy_track_field = True
    both = get(http, f"/v1/playlists/{DEMO_PLAYLIST}/items", token).json()["items"]

    assert [entry["item"] for entry in items] == [entry["track"] for entry in tracks]
    assert not any("track" in entry for entry in items)
    assert not any("item" in entry for entry in tracks)
    assert all(entry["item"] == entry["track"] for entry in both)


def test_local_files_and_unavailable_tracks_are_listed_like_spotify_does(
    fake: FakeSpotify, http: httpx.Client
):
    fake.add_playlist("mixed", [CATALOG[0], LocalFile("Me", "Demo tape", "Tapes", 61_000), None])

    items = get(http, "/v1/playlists/mixed/items", token_for(http)).json()["items"]

    assert [item["is_local"] for item in items] == [False, True, False]
    local = items[1]["item"]
    assert local["id"] is None and local["is_local"] is True
    assert local["uri"] == "spotify:local:Me:Tapes:Demo tape:61"
    assert items[2]["item"] is None


def test_an_episode_is_listed_as_an_episode_object(fake: FakeSpotify, http: httpx.Client):
    fake.add_playlist("talk", [Episode("Tech Talk", "Circuit breakers", 2_400_000), CATALOG[0]])

    items = get(http, "/v1/playlists/talk/items", token_for(http)).json()["items"]

    episode = items[0]["item"]
    assert episode["type"] == "episode"
    assert episode["name"] == "Circuit breakers"
    assert episode["show"]["name"] == "Tech Talk"
    assert re.fullmatch(r"[0-9A-Za-z]{22}", episode["id"])
    assert items[1]["item"]["type"] == "track"


def test_a_track_is_looked_up_by_id(http: httpx.Client):
    answer = get(http, f"/v1/tracks/{CATALOG[2].spotify_id}", token_for(http))

    assert answer.status_code == 200
    assert answer.json()["external_ids"]["isrc"] == CATALOG[2].isrc


@pytest.mark.parametrize(
    "path", ["/v1/tracks/unknown", "/v1/playlists/unknown/items", "/v1/playlists/unknown"]
)
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
    assert limited.json() == {"error": {"status": 429, "message": "Too Many Requests"}}
    assert after.status_code == 200


# -- user tokens, ownership and the refresh grant -----------------------------------------------


def refresh(http: httpx.Client, refresh_token: str) -> httpx.Response:
    return http.post(
        "/api/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        headers={"Authorization": basic()},
    )


def test_a_refresh_token_gets_a_user_token(fake: FakeSpotify, http: httpx.Client):
    # When the default user's refresh token is posted with the refresh grant
    answer = refresh(http, fake.refresh_token)

    # Then a bearer token comes back, without a new refresh token (rotation is off)
    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["access_token"] == fake.issued_tokens[-1]
    assert "refresh_token" not in body


def test_an_app_token_is_refused_403_on_a_users_playlist(fake: FakeSpotify, http: httpx.Client):
    # Given a playlist owned by the default user
    fake.add_playlist("mine", [CATALOG[0]], owner=DEFAULT_USER)
    user_token = refresh(http, fake.refresh_token).json()["access_token"]

    # When its entries are asked for with an app token, then with the owner's token
    as_app = get(http, "/v1/playlists/mine/items", token_for(http))
    as_owner = get(http, "/v1/playlists/mine/items", user_token)

    # Then the app is refused with Spotify's error object, and the owner served
    assert as_app.status_code == 403
    assert as_app.json() == {"error": {"status": 403, "message": "Forbidden"}}
    assert as_owner.status_code == 200
    assert as_owner.json()["items"][0]["item"]["id"] == CATALOG[0].spotify_id


def test_another_users_token_is_refused_403_too(fake: FakeSpotify, http: httpx.Client):
    fake.add_playlist("theirs", [CATALOG[0]], owner="someone-else")
    user_token = refresh(http, fake.refresh_token).json()["access_token"]

    assert get(http, "/v1/playlists/theirs/items", user_token).status_code == 403


def test_a_rotated_refresh_token_replaces_the_old_one(fake: FakeSpotify, http: httpx.Client):
    # Given an accounts service that rotates refresh tokens
    fake.rotate_refresh_tokens = True
    old = fake.refresh_token

    # When the refresh token is used
    first = refresh(http, old).json()

    # Then a new one comes back, which works, while the old one is now refused
    new = first["refresh_token"]
    assert new != old
    assert refresh(http, new).status_code == 200
    refused = refresh(http, old)
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "invalid_grant",
        "error_description": "Invalid refresh token",
    }


def test_a_playlist_tells_its_name_and_owner(fake: FakeSpotify, http: httpx.Client):
    fake.add_playlist("mine", [CATALOG[0], CATALOG[1]], owner=DEFAULT_USER, name="Road trip")

    answer = get(http, "/v1/playlists/mine", token_for(http)).json()

    assert (answer["id"], answer["name"], answer["owner"]["id"]) == (
        "mine",
        "Road trip",
        DEFAULT_USER,
    )
    assert answer["items"] == {"href": f"{fake.url}/v1/playlists/mine/items", "total": 2}


# -- controls over HTTP --------------------------------------------------------------------------


def test_expire_tokens_is_reachable_over_http(fake: FakeSpotify, http: httpx.Client):
    token = token_for(http)

    assert http.post("/_faults/expire_tokens", json={}).status_code == 204

    answer = get(http, f"/v1/tracks/{CATALOG[0].spotify_id}", token)
    assert answer.status_code == 401
    assert answer.json()["error"]["message"] == "The access token expired"


def test_token_lifetime_and_rotation_are_reachable_over_http(fake: FakeSpotify, http: httpx.Client):
    assert http.post("/_faults/token_lifetime", json={"seconds": 0}).status_code == 204
    assert http.post("/_faults/rotate_refresh_tokens", json={"enabled": True}).status_code == 204
    assert http.post("/_faults/token_lifetime", json={}).status_code == 400

    assert fake.token_lifetime == 0
    assert "refresh_token" in refresh(http, fake.refresh_token).json()


@pytest.mark.parametrize("kind", ["html", "truncated"])
def test_the_bad_body_fault_spoils_the_next_success(http: httpx.Client, kind: str):
    # Given the bad-body fault, set over HTTP
    token = token_for(http)
    assert http.post("/_faults/bad_body", json={"count": 1, "kind": kind}).status_code == 204

    # When a track is asked for twice
    spoiled = get(http, f"/v1/tracks/{CATALOG[0].spotify_id}", token)
    healthy = get(http, f"/v1/tracks/{CATALOG[0].spotify_id}", token)

    # Then the first answer is a 200 whose body is not JSON, the second is whole again
    assert spoiled.status_code == 200
    with pytest.raises(ValueError):
        spoiled.json()
    expected_type = "text/html" if kind == "html" else "application/json"
    assert spoiled.headers["Content-Type"].startswith(expected_type)
    assert healthy.json()["id"] == CATALOG[0].spotify_id
