"""A job's arguments are checked and normalised before anything is enqueued."""

from __future__ import annotations

import pytest

from soulspot_jobs.errors import InvalidJobError, SoulspotJobsError
from soulspot_jobs.jobs.validation import (
    MAX_TEXT_LENGTH,
    parse_enrichment,
    parse_isrc,
    parse_mbid,
    parse_playlist_id,
    parse_query,
)

PLAYLIST = "37i9dQZF1DXcBWIGoYBM5M"
MBID = "b1a9c0e9-d987-4042-ae91-78d6a3267d69"


def test_a_query_is_stripped() -> None:
    assert parse_query("  Daft Punk - Around the World \t") == "Daft Punk - Around the World"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "must be given, not None"),
        (123, "must be text, not int 123"),
        (b"x", "must be text, not bytes b'x'"),
        (["a"], "must be text, not list"),
        ("   ", "must not be empty"),
        ("x" * (MAX_TEXT_LENGTH + 1), f"at most {MAX_TEXT_LENGTH} are allowed"),
        ("Daft Punk\n- Around the World", "control character '\\n'"),
        ("Daft Punk\x00", "control character '\\x00'"),
        ("Daft Punk\u2028Around the World", "control character"),
    ],
)
def test_a_bad_query_is_refused_with_the_reason(value: object, reason: str) -> None:
    # When a query of the wrong type, length or content is checked
    with pytest.raises(InvalidJobError) as raised:
        parse_query(value)

    # Then the error names the argument and the reason, and is a ValueError of the project
    assert str(raised.value).startswith("invalid query: ")
    assert reason in str(raised.value)
    assert raised.value.argument == "query"
    assert isinstance(raised.value, SoulspotJobsError | ValueError)


def test_a_long_query_is_quoted_only_in_part() -> None:
    # When a 100 KB query is refused
    with pytest.raises(InvalidJobError) as raised:
        parse_query("A" * 100_000)

    # Then the message is short: it says the length, it does not carry the value
    assert len(str(raised.value)) < 200
    assert "100000 characters" in str(raised.value)


def test_a_query_of_exactly_the_limit_is_accepted() -> None:
    assert parse_query("x" * MAX_TEXT_LENGTH) == "x" * MAX_TEXT_LENGTH


@pytest.mark.parametrize(
    "reference",
    [
        PLAYLIST,
        f"  {PLAYLIST} ",
        f"spotify:playlist:{PLAYLIST}",
        f"https://open.spotify.com/playlist/{PLAYLIST}",
        f"https://open.spotify.com/playlist/{PLAYLIST}?si=1a2b3c4d5e6f",
        f"https://open.spotify.com/playlist/{PLAYLIST}/",
        f"https://open.spotify.com/intl-de/playlist/{PLAYLIST}?si=x&pi=y",
        f"https://open.spotify.com/intl-pt/playlist/{PLAYLIST}#top",
        f"http://open.spotify.com/playlist/{PLAYLIST}",
        f"HTTPS://OPEN.SPOTIFY.COM/playlist/{PLAYLIST}",
    ],
)
def test_a_playlist_id_link_or_uri_is_normalised_to_the_id(reference: str) -> None:
    assert parse_playlist_id(reference) == PLAYLIST


@pytest.mark.parametrize(
    "reference",
    [
        None,
        42,
        b"37i9dQZF1DXcBWIGoYBM5M",
        "",
        "soulspot-demo",
        PLAYLIST[:-1],
        PLAYLIST + "x",
        "37i9dQZF1DXcBWIGoYBM5-",
        f"spotify:album:{PLAYLIST}",
        f"spotify:playlist:{PLAYLIST}:extra",
        f"https://open.spotify.com/album/{PLAYLIST}",
        f"https://open.spotify.com/playlist/{PLAYLIST}/tracks",
        f"https://evil.example/playlist/{PLAYLIST}",
        f"https://open.spotify.com.evil.example/playlist/{PLAYLIST}",
        f"https://user@open.spotify.com/playlist/{PLAYLIST}",
        f"ftp://open.spotify.com/playlist/{PLAYLIST}",
        f"https://open.spotify.com/intl-german/playlist/{PLAYLIST}",
    ],
)
def test_anything_else_is_refused_as_a_playlist(reference: object) -> None:
    with pytest.raises(InvalidJobError) as raised:
        parse_playlist_id(reference)
    assert str(raised.value).startswith("invalid playlist: ")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("USRC17607839", "USRC17607839"),
        ("us-rc1-76-07839", "USRC17607839"),
        (" GBAYE0601498 ", "GBAYE0601498"),
    ],
)
def test_an_isrc_is_normalised_to_its_compact_upper_case_form(value: str, expected: str) -> None:
    assert parse_isrc(value) == expected


@pytest.mark.parametrize(
    "value", ["USRC1760783", "USRC176078390", "1SRC17607839", "USRC1760783X", 12]
)
def test_a_malformed_isrc_is_refused(value: object) -> None:
    with pytest.raises(InvalidJobError, match="^invalid isrc: "):
        parse_isrc(value)


def test_an_mbid_is_a_uuid_in_lower_case() -> None:
    assert parse_mbid(MBID.upper()) == MBID
    with pytest.raises(InvalidJobError, match="^invalid mbid: expected a UUID"):
        parse_mbid("not-a-uuid")


def test_an_enrichment_needs_mbid_isrc_or_artist_and_title() -> None:
    # Then each way to look a recording up is enough
    assert parse_enrichment(mbid=MBID)["mbid"] == MBID
    assert parse_enrichment(isrc="USRC17607839")["isrc"] == "USRC17607839"
    details = parse_enrichment(" Massive Attack ", "Teardrop", duration_ms=330_000)
    assert details == {
        "artist": "Massive Attack",
        "title": "Teardrop",
        "isrc": None,
        "mbid": None,
        "duration_ms": 330_000,
    }

    # And an artist alone, or nothing, is refused
    for partial in ({"artist": "Massive Attack"}, {"title": "Teardrop"}, {}):
        with pytest.raises(InvalidJobError, match="needs mbid, isrc, or both artist and title"):
            parse_enrichment(**partial)


@pytest.mark.parametrize(
    ("arguments", "argument"),
    [
        ({"artist": 1, "title": "Teardrop"}, "artist"),
        ({"artist": "Massive Attack", "title": b"Teardrop"}, "title"),
        ({"isrc": "nope"}, "isrc"),
        ({"mbid": MBID, "duration_ms": -5}, "duration_ms"),
        ({"mbid": MBID, "duration_ms": True}, "duration_ms"),
        ({"mbid": MBID, "duration_ms": "330000"}, "duration_ms"),
    ],
)
def test_a_bad_enrichment_argument_is_named(arguments: dict[str, object], argument: str) -> None:
    with pytest.raises(InvalidJobError) as raised:
        parse_enrichment(**arguments)
    assert raised.value.argument == argument
