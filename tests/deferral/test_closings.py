"""Which published changes of the breakers are closings."""

from __future__ import annotations

import json

import pytest

from soulspot_jobs.deferral.closings import Change, Closings, parse_change


def test_a_breaker_closes_when_seen_closed_after_open_or_half_open() -> None:
    # Given the changes of one breaker through an outage
    closings = Closings()
    states = ["open", "half_open", "open", "half_open", "closed", "closed", "open", "closed"]

    # When each is seen, then only the changes to CLOSED from another state are closings
    seen = [closings.seen("slskd-api", state) for state in states]
    assert seen == [False, False, False, False, True, False, False, True]
    assert closings.state("slskd-api") == "closed"


def test_the_first_closed_seen_of_a_breaker_is_a_closing_and_breakers_are_apart() -> None:
    closings = Closings()
    assert closings.seen("spotify-api", "open") is False
    assert closings.seen("slskd-api", "closed") is True  # never seen before
    assert closings.seen("slskd-api", "closed") is False
    assert closings.state("spotify-api") == "open"
    assert closings.state("musicbrainz-api") is None


def test_a_published_change_is_read_by_its_first_three_fields_whatever_follows() -> None:
    published = json.dumps(["slskd-api", "1700000000.25", "closed", "0", "0", "0", "7", "x", 3])
    assert parse_change(published.encode()) == Change("slskd-api", 1700000000.25, "closed")


@pytest.mark.parametrize(
    "data",
    [b"not json", b"{}", b"[]", b'["slskd-api", "1"]', b'[1, "2", "closed"]', b'["a", "b", "c"]'],
)
def test_anything_else_on_the_channel_is_no_change(data: bytes) -> None:
    assert parse_change(data) is None
