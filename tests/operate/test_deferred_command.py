"""``deferred [--service NAME]``: messages a real Worker deferred while a breaker was OPEN."""

from __future__ import annotations

import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from tests.polling import wait_until

from .conftest import Cli


def test_deferred_lists_each_message_held_back_and_counts_per_service(
    cli: Cli, make_worker
) -> None:
    # Given slskd and MusicBrainz forced OPEN by the operator
    cli("open", "slskd", "--for", "300")
    cli("open", "musicbrainz", "--for", "120")

    def declare(broker: RedisBroker) -> None:
        @dramatiq.actor(broker=broker, service="slskd-api", queue_name="jobs")
        def fetch(n: int) -> None: ...

        @dramatiq.actor(broker=broker, service="musicbrainz-api", queue_name="jobs")
        def lookup(n: int) -> None: ...

    # When a real worker receives two slskd messages and one MusicBrainz message
    jobs = make_worker(declare)
    sent_at = time.time() * 1000
    fetches = [jobs.broker.get_actor("fetch").send(n).message_id for n in (1, 2)]
    lookup = jobs.broker.get_actor("lookup").send(3).message_id
    expected = {"slskd-api": 2, "musicbrainz-api": 1}
    wait_until(lambda: jobs.deferred.counts() == expected, "three deferrals indexed")

    # Then `deferred --json` lists each with actor, service, one deferral and when it runs again
    listed = cli("deferred", "--json").json()
    assert listed["counts"] == expected
    by_id = {job["message_id"]: job for job in listed["jobs"]}
    assert set(by_id) == {*fetches, lookup}
    first = by_id[fetches[0]]
    assert (first["actor"], first["service"], first["deferrals"]) == ("fetch", "slskd-api", 1)
    assert sent_at <= first["first_deferred_at"] <= time.time() * 1000
    assert 290 <= first["runs_again_in"] <= 305 + 5
    assert 110 <= by_id[lookup]["runs_again_in"] <= 120 + 5
    # And --service shows one service's only, in text too
    only = cli("deferred", "--service", "slskd", "--json").json()
    assert {job["message_id"] for job in only["jobs"]} == set(fetches)
    assert only["counts"] == {"slskd-api": 2}
    text = cli("deferred", "--service", "musicbrainz").stdout.splitlines()
    assert text[0].split() == [
        "message_id",
        "actor",
        "service",
        "deferrals",
        "first_deferred",
        "runs_again_in",
    ]
    assert text[1].split()[:4] == [lookup, "lookup", "musicbrainz-api", "1"]
    assert text[-1] == "deferred per service: musicbrainz-api: 1"


def test_deferred_with_an_unknown_service_is_one_line_and_exit_2(cli: Cli) -> None:
    result = cli("deferred", "--service", "lastfm")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown service 'lastfm'")
