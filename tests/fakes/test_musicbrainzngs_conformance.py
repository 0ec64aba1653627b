"""The fake MusicBrainz driven by the real third-party client ``musicbrainzngs``: if a client
written against musicbrainz.org reads the fake's answers and errors as it reads the real
server's, the fake keeps the project's own client honest.

musicbrainzngs keeps its settings in module globals (host, User-Agent, format, rate limit); the
``musicbrainzngs_settings`` fixture puts every one back after each test. Its own rate limit is
off: the fake's rule is what these tests look at.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import musicbrainzngs
import pytest
from musicbrainzngs import musicbrainz

from soulspot_jobs.clients.musicbrainz import ISRC_INC, LOOKUP_INC
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.musicbrainz import (
    HELP,
    RATE_LIMIT_MESSAGE,
    SEARCH_BAD_REQUEST,
    FakeMusicBrainz,
)

TRACK = CATALOG[0]
#: The module globals musicbrainzngs's ``set_*`` functions change.
SETTINGS = (
    "hostname",
    "https",
    "_useragent",
    "_client",
    "ws_format",
    "parser_fun",
    "do_rate_limit",
    "limit_interval",
    "limit_requests",
)
#: Tries musicbrainzngs makes of a request answered 500, 502 or 503 (its ``_safe_read``).
RETRIES = 8
#: Seconds musicbrainzngs waits before its n-th retry: n times this.
RETRY_DELAY = 2.0


@pytest.fixture
def musicbrainzngs_settings() -> Iterator[None]:
    """musicbrainzngs's global settings as they were before the test, after it."""
    saved = {name: getattr(musicbrainz, name) for name in SETTINGS}
    yield
    for name, value in saved.items():
        setattr(musicbrainz, name, value)


@pytest.fixture
def fake(musicbrainzngs_settings: None) -> Iterator[FakeMusicBrainz]:
    """A fake without its rate rule, with musicbrainzngs pointed at it."""
    with FakeMusicBrainz(min_interval=0) as server:
        use(server)  # type: ignore[arg-type]
        yield server  # type: ignore[misc]


@pytest.fixture
def retry_delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds musicbrainzngs waits between tries, recorded instead of slept."""
    delays: list[float] = []
    clock = SimpleNamespace(time=musicbrainz.time.time, sleep=delays.append)
    monkeypatch.setattr(musicbrainz, "time", clock)
    return delays


@pytest.fixture
def groups_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let musicbrainzngs send ``inc=release-groups`` on a recording lookup, as the project's
    client does: musicbrainz-server's ``WS::2::Recording`` accepts it, but musicbrainzngs
    0.7.1's own list of recording includes lacks it and refuses it before sending."""
    allowed = [*musicbrainz.VALID_INCLUDES["recording"], "release-groups"]
    monkeypatch.setitem(musicbrainz.VALID_INCLUDES, "recording", allowed)


def use(fake: FakeMusicBrainz) -> None:
    """Point musicbrainzngs at ``fake``: plain HTTP, JSON, a meaningful User-Agent, no limit."""
    musicbrainzngs.set_hostname(f"127.0.0.1:{fake.port}", use_https=False)
    musicbrainzngs.set_useragent("soulspot-jobs-tests", "1.0", "tests@example.org")
    with warnings.catch_warnings():  # "The json format is non-official and may change"
        warnings.simplefilter("ignore", UserWarning)
        musicbrainzngs.set_format("json")
    musicbrainzngs.set_rate_limit(False)


def error_of(raised: pytest.ExceptionInfo[musicbrainzngs.WebServiceError]) -> tuple[int, Any]:
    """The HTTP status and the JSON body of the answer behind a musicbrainzngs error."""
    cause = raised.value.cause
    return cause.code, json.loads(cause.read())


# -- what it reads --------------------------------------------------------------------------


def test_musicbrainzngs_searches_recordings_as_the_project_does(fake: FakeMusicBrainz) -> None:
    """musicbrainzngs searches at ``/ws/2/recording/``: musicbrainz-server's
    ``recording_search`` (``Chained('root') PathPart('recording') Args(0)``) serves it, as
    Catalyst ignores a trailing slash. A strict search sends the query the project's client
    sends, ``artist:"..." AND recording:"..."`` with Lucene's specials escaped."""
    # When musicbrainzngs searches the artist and title strictly
    found = musicbrainzngs.search_recordings(
        artist=TRACK.artist, recording=TRACK.title, strict=True, limit=5
    )

    # Then it reads the search's JSON, best match first, from the path it asked for
    assert set(found) == {"created", "count", "offset", "recordings"}
    assert len(found["recordings"]) == 5
    best = found["recordings"][0]
    assert (best["id"], best["score"], best["title"]) == (TRACK.mbid, 100, TRACK.title)
    assert fake.requests == [("GET", "/ws/2/recording/")]


def test_musicbrainzngs_looks_up_a_recording_with_the_projects_includes(
    fake: FakeMusicBrainz, groups_allowed: None
) -> None:
    """musicbrainz-server's recording lookup with ``inc=artists releases release-groups
    isrcs`` (``WS::2::Recording``; ``inc`` values joined by a space, as musicbrainzngs sends
    them): artist credits, the releases each with its release group, the ISRCs."""
    # When musicbrainzngs looks the recording up with the includes the project's client uses
    recording = musicbrainzngs.get_recording_by_id(TRACK.mbid, includes=LOOKUP_INC.split())

    # Then every part they ask for is there
    assert recording["id"] == TRACK.mbid
    assert recording["artist-credit"][0]["name"] == TRACK.artist
    assert recording["isrcs"] == [TRACK.isrc]
    [release] = recording["releases"]
    assert release["id"] == TRACK.release_mbid
    assert release["release-group"]["primary-type"] == "Album"


def test_musicbrainzngs_looks_up_an_isrc_with_the_projects_includes(
    fake: FakeMusicBrainz,
) -> None:
    """musicbrainz-server's ISRC lookup (``WS::2::ISRC``) lists the recordings carrying it,
    serialized below top level: without releases."""
    found = musicbrainzngs.get_recordings_by_isrc(TRACK.isrc, includes=ISRC_INC.split())

    assert found["isrc"] == TRACK.isrc
    [recording] = found["recordings"]
    assert recording["id"] == TRACK.mbid
    assert recording["artist-credit"][0]["name"] == TRACK.artist
    assert "releases" not in recording


# -- what it raises ------------------------------------------------------------------------


def test_an_unknown_mbid_is_musicbrainzs_404(fake: FakeMusicBrainz) -> None:
    """musicbrainz-server's ``not_found`` (``ControllerBase::WS::2``): 404 and
    ``{"error": "Not Found", "help": ...}``; musicbrainzngs raises ``ResponseError``."""
    with pytest.raises(musicbrainzngs.ResponseError) as raised:
        musicbrainzngs.get_recording_by_id("00000000-0000-4000-8000-000000000000")

    assert error_of(raised) == (404, {"error": "Not Found", "help": HELP})


@pytest.mark.parametrize("query", ['title:"abc', "(foo", "AND", "artist:"])
def test_a_query_lucene_cannot_parse_is_musicbrainzs_400(fake: FakeMusicBrainz, query: str) -> None:
    """musicbrainz-server passes the query on to its search server, which answers 400 when
    Lucene's parser refuses it; ``Data::WebService::xml_search`` turns that into a 400 with
    "Search server could not complete query: Bad request". musicbrainzngs sends a query
    given without fields as it is, and raises ``ResponseError`` for the 400."""
    with pytest.raises(musicbrainzngs.ResponseError) as raised:
        musicbrainzngs.search_recordings(query=query)

    assert error_of(raised) == (400, {"error": SEARCH_BAD_REQUEST, "help": HELP})


def test_musicbrainzs_rate_limit_503_is_retried_then_a_network_error(
    musicbrainzngs_settings: None, retry_delays: list[float]
) -> None:
    """MusicBrainz answers a client over its rate limit (one request a second) with 503 and
    "Your requests are exceeding the allowable rate limit...". musicbrainzngs takes a 503 as
    transient: it tries 8 times, waiting 2 s more before each retry, then raises
    ``NetworkError`` with the last answer as its cause."""
    # Given a fake whose rule allows one request per 30 s, and one request made
    with FakeMusicBrainz(min_interval=30) as fake:
        use(fake)  # type: ignore[arg-type]
        musicbrainzngs.get_recording_by_id(TRACK.mbid)

        # When musicbrainzngs asks again at once
        with pytest.raises(musicbrainzngs.NetworkError) as raised:
            musicbrainzngs.get_recording_by_id(TRACK.mbid)

    # Then every try got the rate rule's 503, with waits growing between them
    assert error_of(raised) == (503, {"error": RATE_LIMIT_MESSAGE, "help": HELP})
    assert fake.rate_limited == RETRIES
    assert retry_delays == [RETRY_DELAY * n for n in range(1, RETRIES)]


def test_a_passing_503_is_retried_through(fake: FakeMusicBrainz, retry_delays: list[float]) -> None:
    """A 503 that passes (MusicBrainz overloaded for a moment) costs musicbrainzngs one retry."""
    # Given one injected 503 in MusicBrainz's error shape
    fake.faults.fail(1, status=503)

    # When musicbrainzngs looks a recording up, then it gets it on its second try
    assert musicbrainzngs.get_recording_by_id(TRACK.mbid)["id"] == TRACK.mbid
    assert retry_delays == [RETRY_DELAY]
    assert len(fake.requests) == 2
