"""The fake MusicBrainz over plain HTTP: the answers' shapes, its Lucene, its lookups, and the
rules MusicBrainz enforces (a meaningful User-Agent, JSON on request, one request per interval)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from soulspot_jobs.fakes.catalog import CATALOG, CatalogTrack
from soulspot_jobs.fakes.musicbrainz import (
    HELP,
    RATE_LIMIT_MESSAGE,
    SEARCH_BAD_REQUEST,
    FakeMusicBrainz,
)

AGENT = "soulspot-jobs-tests/1.0 ( tests@example.org )"
TRACK = CATALOG[0]
SEARCH = "/ws/2/recording"
LOOKUP_INC = "artists releases isrcs"
GROUPS_INC = "artists releases release-groups isrcs"


@pytest.fixture
def fake() -> Iterator[FakeMusicBrainz]:
    """A fake without its rate rule, so that shape tests may ask in quick succession."""
    with FakeMusicBrainz(min_interval=0) as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def http(fake: FakeMusicBrainz) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, headers={"User-Agent": AGENT}) as client:
        yield client


def search(http: httpx.Client, query: str, **params: Any) -> httpx.Response:
    return http.get(SEARCH, params={"query": query, "fmt": "json", **params})


def phrase_query(artist: str, title: str) -> str:
    return f'artist:"{artist}" AND recording:"{title}"'


# -- search -----------------------------------------------------------------------------------


def test_a_search_answers_in_musicbrainz_shape(http: httpx.Client) -> None:
    # When the exact artist and title are searched
    response = search(http, phrase_query(TRACK.artist, TRACK.title))
    # Then the answer has MusicBrainz's envelope and recording shape
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"created", "count", "offset", "recordings"}
    assert body["created"].endswith("Z")
    assert body["offset"] == 0
    assert body["count"] == len(body["recordings"])
    first = body["recordings"][0]
    assert first["id"] == TRACK.mbid
    assert first["score"] == 100
    assert first["title"] == TRACK.title
    assert first["length"] == TRACK.duration_ms
    assert first["video"] is False
    assert first["first-release-date"] == TRACK.release_date
    assert first["isrcs"] == [TRACK.isrc]
    [credit] = first["artist-credit"]
    assert credit["name"] == TRACK.artist
    assert set(credit["artist"]) == {"id", "name", "sort-name", "disambiguation"}
    [release] = first["releases"]
    assert release["id"] == TRACK.release_mbid
    assert release["title"] == TRACK.album
    assert release["status"] == "Official"
    assert release["release-group"]["primary-type"] == "Album"
    assert {"date", "country", "track-count", "media"} <= set(release)
    [medium] = release["media"]
    assert medium["track"][0]["title"] == TRACK.title
    assert medium["track"][0]["length"] == TRACK.duration_ms


def test_near_matches_score_lower_and_differ_in_length(http: httpx.Client) -> None:
    # When the exact artist and title are searched
    recordings = search(http, phrase_query(TRACK.artist, TRACK.title)).json()["recordings"]
    # Then the results are best first, and besides the exact recording come versions that are
    # not it: a live version, a radio edit, a cover, each scored lower and of another length
    scores = [r["score"] for r in recordings]
    assert scores == sorted(scores, reverse=True)
    titles = {r["title"] for r in recordings}
    assert {f"{TRACK.title} (live)", f"{TRACK.title} (radio edit)"} <= titles
    assert any(r["artist-credit"][0]["name"] != TRACK.artist for r in recordings)
    others = [r for r in recordings if r["id"] != TRACK.mbid]
    assert all(r["length"] != TRACK.duration_ms for r in others)
    assert all(r["score"] < 100 for r in others if r["title"] != TRACK.title)


def test_escaped_lucene_specials_are_read_as_plain_text() -> None:
    # Given a catalog whose artist and title are full of Lucene specials
    odd = CatalogTrack(
        "AC/DC", "T.N.T. (Live!)", "If You Want Blood", 214_000, "AUAP07900014",
        "0" * 22, "11111111-2222-4333-8444-555555555555",
        "66666666-7777-4888-9999-000000000000", "1978-10-13",
    )  # fmt: skip
    with FakeMusicBrainz(catalog=[odd], min_interval=0) as fake:
        query = phrase_query(r"AC\/DC", r"T.N.T. \(Live\!\)")
        # When they are searched escaped, as a client must send them
        with httpx.Client(base_url=fake.url, headers={"User-Agent": AGENT}) as http:
            recordings = search(http, query).json()["recordings"]
    # Then the recording is found, as an exact match
    assert recordings[0]["id"] == odd.mbid
    assert recordings[0]["score"] == 100


def test_a_search_ignores_case_and_accents(http: httpx.Client) -> None:
    # When "Björk - Jóga" is searched without accents, in lower case
    recordings = search(http, phrase_query("bjork", "joga")).json()["recordings"]
    # Then the recording is found
    assert recordings[0]["title"] == "Jóga"
    assert recordings[0]["score"] == 100


def test_a_search_for_unknown_music_finds_nothing(http: httpx.Client) -> None:
    body = search(http, phrase_query("Nobody", "Nothing")).json()
    assert body["count"] == 0
    assert body["recordings"] == []


def test_a_search_pages_with_limit_and_offset(http: httpx.Client) -> None:
    # Given every result of a search
    everything = search(http, phrase_query(TRACK.artist, TRACK.title)).json()
    # When the second page of two is asked for
    page = search(http, phrase_query(TRACK.artist, TRACK.title), limit=2, offset=2).json()
    # Then it holds results three and four, and the full count
    assert page["count"] == everything["count"]
    assert page["offset"] == 2
    assert page["recordings"] == everything["recordings"][2:4]


@pytest.mark.parametrize(
    "query",
    [
        'recording:"abc',  # an unclosed phrase
        "(foo",
        "foo)",
        "AND",
        "foo AND",
        "artist:",
        "artist: AND recording:foo",
        "foo\\",  # a trailing backslash
        "AC/DC",  # an unclosed /regex/
        "date:[1990 TO",
        "foo^",
    ],
)
def test_a_query_lucene_cannot_parse_is_a_bad_request(http: httpx.Client, query: str) -> None:
    """musicbrainz-server hands the query to its search server; when that answers 400 (Lucene's
    query parser refused the query), it answers 400 in its error shape
    (``Data::WebService::xml_search``)."""
    response = search(http, query)
    assert response.status_code == 400
    assert response.json() == {"error": SEARCH_BAD_REQUEST, "help": HELP}


@pytest.mark.parametrize(
    "query",
    [
        f"{TRACK.artist} {TRACK.title}",
        f'artist:({TRACK.artist}) && NOT recording:"live"',
        f'+artist:"{TRACK.artist}" -recording:live^2 recording:{TRACK.title.split()[0]}~',
        "date:[1990 TO 2000] OR isrc:GBAYE0000351",
        "arid:5b11f4ce-a62d-471e-81fc-a69a8278c7da",
    ],
)
def test_any_query_lucene_parses_is_answered(http: httpx.Client, query: str) -> None:
    """Lucene syntax the fake does not rank by (ranges, boosts, negations) is still syntax."""
    assert search(http, query).status_code == 200


def test_a_path_with_a_trailing_slash_is_served_as_without(http: httpx.Client) -> None:
    """musicbrainz-server's dispatcher ignores a trailing slash; musicbrainzngs searches at
    ``/ws/2/recording/``."""
    query = {"query": phrase_query(TRACK.artist, TRACK.title), "fmt": "json"}
    lookup = {"fmt": "json", "inc": LOOKUP_INC}
    for path, params in [
        (SEARCH, query),
        (f"/ws/2/recording/{TRACK.mbid}", lookup),
        (f"/ws/2/isrc/{TRACK.isrc}", lookup),
    ]:
        plain, slashed = http.get(path, params=params), http.get(f"{path}/", params=params)
        assert (slashed.status_code, plain.status_code) == (200, 200), path
        assert _without_created(slashed.json()) == _without_created(plain.json()), path


def _without_created(body: dict[str, Any]) -> dict[str, Any]:
    """A search answer without the time it was made; any other answer as it is."""
    return {name: value for name, value in body.items() if name != "created"}


# -- lookups ----------------------------------------------------------------------------------


def test_a_recording_lookup_includes_only_what_inc_asks_for(http: httpx.Client) -> None:
    # When a recording is looked up without, then with inc
    bare = http.get(f"/ws/2/recording/{TRACK.mbid}", params={"fmt": "json"}).json()
    full = http.get(
        f"/ws/2/recording/{TRACK.mbid}", params={"fmt": "json", "inc": LOOKUP_INC}
    ).json()
    # Then the bare answer has no artists, releases or ISRCs, and the full one has them all
    assert bare["id"] == full["id"] == TRACK.mbid
    assert not {"artist-credit", "releases", "isrcs", "score"} & set(bare)
    assert full["artist-credit"][0]["name"] == TRACK.artist
    assert full["isrcs"] == [TRACK.isrc]
    assert full["releases"][0]["id"] == TRACK.release_mbid


def test_an_unknown_inc_is_a_bad_request(http: httpx.Client) -> None:
    response = http.get(
        f"/ws/2/recording/{TRACK.mbid}", params={"fmt": "json", "inc": "artists+labels"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == (
        "labels is not a valid inc parameter for the recording resource."
    )


def test_inc_values_may_be_joined_by_a_plus_as_well_as_a_space(http: httpx.Client) -> None:
    # When the plus itself is sent (encoded as %2B), not a space
    response = http.get(
        f"/ws/2/recording/{TRACK.mbid}", params={"fmt": "json", "inc": "artists+releases"}
    )
    # Then MusicBrainz splits on it all the same
    assert response.status_code == 200
    assert {"artist-credit", "releases"} <= set(response.json())


def test_a_release_has_its_release_group_only_with_inc_release_groups(http: httpx.Client) -> None:
    # When a recording is looked up with releases, then with releases and their groups
    without = http.get(
        f"/ws/2/recording/{TRACK.mbid}", params={"fmt": "json", "inc": LOOKUP_INC}
    ).json()
    with_groups = http.get(
        f"/ws/2/recording/{TRACK.mbid}", params={"fmt": "json", "inc": GROUPS_INC}
    ).json()

    # Then only the second one's release says what type of release it is
    assert "release-group" not in without["releases"][0]
    assert with_groups["releases"][0]["release-group"]["primary-type"] == "Album"


def test_media_needs_releases(http: httpx.Client) -> None:
    response = http.get(f"/ws/2/recording/{TRACK.mbid}", params={"fmt": "json", "inc": "media"})
    assert response.status_code == 400
    assert response.json()["error"] == (
        "media is not a valid option for the inc parameter for the recording resource unless "
        "you specify one of the following other inc parameters: releases"
    )


def test_an_isrc_lookup_lists_the_recordings_carrying_it(http: httpx.Client) -> None:
    response = http.get(f"/ws/2/isrc/{TRACK.isrc}", params={"fmt": "json", "inc": LOOKUP_INC})
    body = response.json()
    assert body["isrc"] == TRACK.isrc
    assert [r["id"] for r in body["recordings"]] == [TRACK.mbid]
    assert body["recordings"][0]["artist-credit"][0]["name"] == TRACK.artist
    assert body["recordings"][0]["isrcs"] == [TRACK.isrc]


def test_an_isrc_lookup_never_lists_releases(http: httpx.Client) -> None:
    # When an ISRC is looked up asking for releases
    response = http.get(f"/ws/2/isrc/{TRACK.isrc}", params={"fmt": "json", "inc": LOOKUP_INC})
    # Then its recordings come without them, as MusicBrainz serializes them below top level
    assert response.status_code == 200
    assert "releases" not in response.json()["recordings"][0]


def test_an_isrc_lookup_refuses_release_groups(http: httpx.Client) -> None:
    response = http.get(f"/ws/2/isrc/{TRACK.isrc}", params={"fmt": "json", "inc": GROUPS_INC})
    assert response.status_code == 400
    assert response.json()["error"] == (
        "release-groups is not a valid inc parameter for the isrc resource."
    )


@pytest.mark.parametrize(
    "path",
    ["/ws/2/recording/00000000-0000-4000-8000-000000000000", "/ws/2/isrc/XXAAA0000000"],
)
def test_an_unknown_id_is_not_found(http: httpx.Client, path: str) -> None:
    response = http.get(path, params={"fmt": "json"})
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found", "help": HELP}


@pytest.mark.parametrize("path", ["/ws/2/recording/not-a-uuid", "/ws/2/isrc/nonsense"])
def test_a_malformed_id_is_a_bad_request(http: httpx.Client, path: str) -> None:
    assert http.get(path, params={"fmt": "json"}).status_code == 400


# -- the rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("agent", [None, "", "python-httpx/0.28.1", "curl/8.5.0"])
def test_a_request_without_a_meaningful_user_agent_is_forbidden(
    fake: FakeMusicBrainz, agent: str | None
) -> None:
    # Given a client sending no User-Agent, an empty one or a library's default
    with httpx.Client(base_url=fake.url) as http:
        if agent is None:
            del http.headers["User-Agent"]
        else:
            http.headers["User-Agent"] = agent
        # When it searches
        response = search(http, phrase_query(TRACK.artist, TRACK.title))
    # Then MusicBrainz refuses it, and the refusal is not counted as an accepted request
    assert response.status_code == 403
    assert "User-Agent" in response.json()["error"]
    assert fake.accepted_times == []


def test_answers_are_json_only_when_asked_for(http: httpx.Client) -> None:
    without = http.get(SEARCH, params={"query": phrase_query(TRACK.artist, TRACK.title)})
    accepted = http.get(
        SEARCH,
        params={"query": phrase_query(TRACK.artist, TRACK.title)},
        headers={"Accept": "application/json"},
    )
    assert without.status_code == 406
    assert accepted.status_code == 200


def test_a_request_sooner_than_min_interval_is_rate_limited() -> None:
    # Given a fake allowing one request per 0.25 s
    with (
        FakeMusicBrainz(min_interval=0.25) as fake,
        httpx.Client(base_url=fake.url, headers={"User-Agent": AGENT}) as http,
    ):
        # When two requests come back to back
        first = search(http, phrase_query(TRACK.artist, TRACK.title))
        second = search(http, phrase_query(TRACK.artist, TRACK.title))
        # Then the second gets MusicBrainz's 503, without Retry-After
        assert first.status_code == 200
        assert second.status_code == 503
        assert second.json()["error"] == RATE_LIMIT_MESSAGE
        assert "Retry-After" not in second.headers
        assert fake.rate_limited == 1
        assert len(fake.accepted_times) == 1
        # And once the interval has passed, a request is accepted again
        time.sleep(0.25)
        assert search(http, phrase_query(TRACK.artist, TRACK.title)).status_code == 200
        assert len(fake.accepted_times) == 2
        assert fake.accepted_times[1] - fake.accepted_times[0] >= 0.25


def test_a_rate_limited_answer_carries_retry_after_when_configured() -> None:
    with (
        FakeMusicBrainz(min_interval=0.25, retry_after=2) as fake,
        httpx.Client(base_url=fake.url, headers={"User-Agent": AGENT}) as http,
    ):
        search(http, phrase_query(TRACK.artist, TRACK.title))
        response = search(http, phrase_query(TRACK.artist, TRACK.title))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"


def test_injected_faults_answer_before_the_musicbrainz_rules(
    fake: FakeMusicBrainz, http: httpx.Client
) -> None:
    # Given an outage in 503 mode, set over HTTP
    assert http.post("/_faults/outage", json={"seconds": 30, "mode": "503"}).status_code == 204
    # When a search comes
    response = search(http, phrase_query(TRACK.artist, TRACK.title))
    # Then it gets the outage's 503, and is not an accepted request
    assert response.status_code == 503
    assert response.json() == {"error": "Service Unavailable", "help": HELP}
    assert fake.accepted_times == []
    fake.faults.clear()
    assert search(http, phrase_query(TRACK.artist, TRACK.title)).status_code == 200
