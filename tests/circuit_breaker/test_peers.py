"""Per-peer breakers: one keyed breaker per slskd user, the ejection cap, forgetting idle peers.

Every behavioural test runs on both stores (one MemoryBackend per peer; Redis without local
view), driven by the fake clock of ``tests/circuit_breaker/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from structlog.testing import capture_logs

from bench import peer_memory
from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.circuit_breaker.peers import (
    MAX_REASON_BYTES,
    PeerBreakers,
    PeerStatus,
    Pick,
    clip,
    peer_config,
    screen,
)
from tests.circuit_breaker.conftest import FakeClock
from tests.polling import wait_until

PREFIX = "test:breaker:peer"
#: Four peers of a search, best first.
PEERS = ["flac_fan", "mp3 archive", "old_rips", "slow_peer"]


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
def peers(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[PeerBreakers]:
    """Peer breakers with the default config, in memory or on the test Redis."""
    client = request.getfixturevalue("redis_client") if request.param == "redis" else None
    built = PeerBreakers(client=client, prefix=PREFIX, clock=clock)
    yield built
    built.close()


def eject(peers: PeerBreakers, username: str, reason: str = "offline") -> float | None:
    """Fail ``username`` as many times as it takes to eject it; the seconds it is ejected for."""
    ejected = None
    for _ in range(peers.config.failure_threshold):
        pick = peers.pick(username)
        assert pick is not None
        ejected = peers.failed(pick, reason)
    return ejected


def status(username: str, ejected: bool, since: float = 0.0) -> PeerStatus:
    state = CircuitState.OPEN if ejected else CircuitState.CLOSED
    return PeerStatus(username, state, ejected, None, None, since)


# -- the cap, as a pure function ------------------------------------------------------------


def test_at_most_the_set_share_of_peers_is_skipped_the_most_recently_ejected_first() -> None:
    # Given four peers, three of them ejected (at 30, 10 and 20)
    statuses = [
        status("a", True, since=30.0),
        status("b", False),
        status("c", True, since=10.0),
        status("d", True, since=20.0),
    ]

    # When they are screened with a cap of 50 %
    screening = screen(statuses, 50.0)

    # Then two are skipped, the most recently ejected; the other goes after the healthy one
    assert [s.username for s in screening.skipped] == ["d", "a"]
    assert screening.order == ("b", "c")


def test_a_search_whose_peers_are_all_ejected_still_tries_some_least_recently_ejected_first() -> (
    None
):
    # Given four peers, all ejected, at different times
    since = {"a": 4.0, "b": 1.0, "c": 3.0, "d": 2.0}
    statuses = [status(name, True, since=at) for name, at in since.items()]

    # When screened with a cap of 50 %, then of 100 %
    half, whole = screen(statuses, 50.0), screen(statuses, 100.0)

    # Then half of them are tried, least recently ejected first; and never none
    assert half.order == ("b", "d")
    assert whole.order == ("b",)


def test_a_lone_ejected_peer_is_never_skipped() -> None:
    assert screen([status("a", True)], 50.0).order == ("a",)
    assert screen([], 50.0).order == ()


def test_arrange_keeps_the_rank_of_healthy_peers_and_puts_kept_ejected_ones_last() -> None:
    # Given candidates (peer, file) best first, peer "a" ejected but kept, "c" skipped
    statuses = [status("a", True, 1.0), status("b", False), status("c", True, 2.0)]
    screening = screen(statuses, 34.0)
    items = [("a", 1), ("b", 2), ("c", 3), ("a", 4), ("b", 5)]

    # When arranged
    arranged = screening.arrange(items, lambda item: item[0])

    # Then b's files keep their rank, a's come last, c's are gone
    assert arranged == [("b", 2), ("b", 5), ("a", 1), ("a", 4)]


def test_a_long_reason_is_cut_to_a_few_dozen_bytes_on_a_character_boundary() -> None:
    reason = "Failed to connect to user é" * 10
    assert len(clip(reason).encode()) <= MAX_REASON_BYTES
    assert clip(reason).endswith("...")
    assert clip("offline") == "offline"


# -- one breaker per peer, on both stores --------------------------------------------------


def test_a_peer_failing_its_threshold_is_ejected_and_skipped_by_the_next_screening(
    peers: PeerBreakers,
) -> None:
    # Given a peer that failed three transfers in a row
    with capture_logs() as logs:
        seconds = eject(peers, "flac_fan")

    # Then it is ejected for the peers' timeout, logged once with the reason
    assert seconds == peers.config.timeout == 600.0
    ejections = [e for e in logs if e.get("event_name") == "slskd.peer_ejected"]
    assert [e["event"] for e in ejections] == ["slskd peer flac_fan skipped for 600 s: offline"]
    # And the next search's screening skips it, and it alone
    screening = peers.screen(PEERS)
    assert [s.username for s in screening.skipped] == ["flac_fan"]
    assert screening.skipped[0].reason == "offline"
    assert screening.order == tuple(PEERS[1:])
    # And a job that picks it anyway is refused
    assert peers.pick("flac_fan") is None


def test_after_its_period_an_ejected_peer_gets_one_trial_and_one_success_brings_it_back(
    peers: PeerBreakers, clock: FakeClock
) -> None:
    # Given an ejected peer whose period is over
    eject(peers, "flac_fan")
    clock.advance(600.0)

    # When a job picks it
    trial = peers.pick("flac_fan")

    # Then the job holds its trial slot, and meanwhile the peer is ejected for the others
    assert trial is not None and trial.token is not None
    assert peers.pick("flac_fan") is None
    [busy] = peers.statuses(["flac_fan"])
    assert (busy.state, busy.ejected) == (CircuitState.HALF_OPEN, True)
    # And when the transfer succeeds, the peer is back
    peers.succeeded(trial)
    assert peers.stats("flac_fan").state is CircuitState.CLOSED
    assert peers.screen(PEERS).order == tuple(PEERS)


def test_a_failed_trial_ejects_the_peer_for_twice_as_long(
    peers: PeerBreakers, clock: FakeClock
) -> None:
    eject(peers, "flac_fan")
    clock.advance(600.0)
    trial = peers.pick("flac_fan")
    assert trial is not None
    assert peers.failed(trial, "offline") == 1200.0


def test_a_released_trial_is_free_for_the_next_job(peers: PeerBreakers, clock: FakeClock) -> None:
    # Given a peer in HALF_OPEN whose trial ended for slskd's own reason
    eject(peers, "flac_fan")
    clock.advance(600.0)
    trial = peers.pick("flac_fan")
    assert trial is not None
    peers.released(trial)

    # Then the next job gets the trial, and nothing was counted
    assert peers.pick("flac_fan") is not None
    assert peers.stats("flac_fan").total_failures == peers.config.failure_threshold


def test_a_forced_pick_of_an_ejected_peer_that_succeeds_closes_its_breaker(
    peers: PeerBreakers,
) -> None:
    # Given an ejected peer the cap kept
    eject(peers, "flac_fan")

    # When a job picks it forced and its transfer succeeds
    pick = peers.pick("flac_fan", forced=True)
    assert pick == Pick("flac_fan", None, forced=True)
    peers.succeeded(pick)

    # Then the peer is no longer ejected
    assert not peers.statuses(["flac_fan"])[0].ejected


def test_failures_lapse_after_the_reset_timeout(peers: PeerBreakers, clock: FakeClock) -> None:
    for _ in range(peers.config.failure_threshold - 1):
        peers.failed(Pick("flac_fan"), "offline")
    clock.advance(peers.config.reset_timeout + 1)
    assert peers.failed(Pick("flac_fan"), "offline") is None
    assert not peers.statuses(["flac_fan"])[0].ejected


def test_the_census_counts_remembered_and_ejected_peers(peers: PeerBreakers) -> None:
    eject(peers, "flac_fan")
    eject(peers, "old_rips")
    peers.failed(Pick("mp3 archive"), "timed out")
    census = peers.census()
    assert (census.tracked, census.ejected) == (3, 2)


def test_a_peer_that_never_failed_is_picked_and_succeeds_without_being_remembered(
    peers: PeerBreakers,
) -> None:
    # When a job picks a peer that never failed, and its transfer succeeds
    pick = peers.pick("flac_fan")
    assert pick == Pick("flac_fan")
    peers.succeeded(pick)

    # Then nothing was written: only peers that failed are remembered
    assert peers.census().tracked == 0
    assert peers.stats("flac_fan").total_requests == 0


def test_a_success_clears_the_failures_a_peer_had(peers: PeerBreakers) -> None:
    # Given a peer that failed twice, one short of ejection
    for _ in range(peers.config.failure_threshold - 1):
        peers.failed(Pick("flac_fan"), "offline")

    # When a transfer from it succeeds, then it fails once more
    pick = peers.pick("flac_fan")
    assert pick is not None
    peers.succeeded(pick)

    # Then its count started again: one failure is not enough to eject it
    assert peers.failed(Pick("flac_fan"), "offline") is None
    assert peers.stats("flac_fan").failure_count == 1


def test_peers_use_their_own_config() -> None:
    # Given overrides of the peer defaults
    config = peer_config(failure_threshold=1, timeout=30.0, max_timeout=60.0)
    peers = PeerBreakers(config=config)

    # Then one failure ejects for 30 s
    assert peers.failed(Pick("flac_fan"), "offline") == 30.0


# -- forgetting -------------------------------------------------------------------------------


def test_in_memory_an_idle_peer_is_forgotten(clock: FakeClock) -> None:
    peers = PeerBreakers(idle_expiry=3600.0, clock=clock)
    eject(peers, "flac_fan")
    clock.advance(3599.0)
    assert peers.census().tracked == 1
    clock.advance(1.0)
    assert peers.census().tracked == 0
    assert not peers.statuses(["flac_fan"])[0].ejected


def test_in_memory_at_most_max_peers_are_kept_the_least_recently_written_forgotten() -> None:
    peers = PeerBreakers(max_peers=3)
    for name in ["a", "b", "c", "d", "e"]:
        peers.failed(Pick(name), "offline")
    assert peers.census().tracked == 3
    assert peers.stats("e").total_failures == 1
    assert [s.username for s in peers.statuses(["a", "b", "c", "d", "e"])] == list("abcde")


def test_on_redis_a_peer_key_expires_after_its_idle_period(redis_client: redis.Redis) -> None:
    # Given peers remembered for 0.3 s after their last write
    peers = PeerBreakers(client=redis_client, prefix=PREFIX, idle_expiry=0.3)
    eject(peers, "flac_fan")
    key = f"{PREFIX}:flac_fan"

    # Then the key carries that TTL, and is gone once it passed: the peer is healthy again
    assert 0 < redis_client.pttl(key) <= 300
    wait_until(lambda: not redis_client.exists(key), "the peer key to expire", 5.0)
    assert not peers.statuses(["flac_fan"])[0].ejected
    assert peers.census().tracked == 0


def test_on_redis_every_write_restarts_the_idle_period(redis_client: redis.Redis) -> None:
    peers = PeerBreakers(client=redis_client, prefix=PREFIX, idle_expiry=60.0)
    key = f"{PREFIX}:flac_fan"
    peers.failed(Pick("flac_fan"), "offline")
    redis_client.pexpire(key, 1000)
    peers.succeeded(Pick("flac_fan"))
    assert redis_client.pttl(key) > 50_000


def test_on_redis_a_peer_hash_stays_compact_with_a_long_reason(redis_client: redis.Redis) -> None:
    peers = PeerBreakers(client=redis_client, prefix=PREFIX)
    eject(peers, "flac_fan", "Failed to connect to user flac_fan: " + "x" * 200)
    assert redis_client.object("encoding", f"{PREFIX}:flac_fan") in (b"listpack", b"ziplist")


# -- shared by every process on one Redis ---------------------------------------------------


def test_a_peer_ejected_through_one_instance_is_skipped_through_another(
    redis_client: redis.Redis, redis_url: str
) -> None:
    # Given two peer breakers on the same Redis, each with a client and backend of its own
    other_client = redis.Redis.from_url(redis_url)
    first = PeerBreakers(client=redis_client, prefix=PREFIX)
    second = PeerBreakers(client=other_client, prefix=PREFIX)
    try:
        # When the first ejects a peer
        eject(first, "flac_fan")

        # Then the second skips it and refuses it
        assert [s.username for s in second.screen(PEERS).skipped] == ["flac_fan"]
        assert second.pick("flac_fan") is None
    finally:
        first.close()
        second.close()
        other_client.close()


def test_on_redis_the_service_breakers_keys_are_untouched(redis_client: redis.Redis) -> None:
    peers = PeerBreakers(client=redis_client, prefix=PREFIX)
    eject(peers, "slskd-api")
    assert [k.decode() for k in redis_client.keys("*")] == [f"{PREFIX}:slskd-api"]


def test_a_screening_is_one_round_trip(redis_client: redis.Redis) -> None:
    peers = PeerBreakers(client=redis_client, prefix=PREFIX)
    eject(peers, "flac_fan")
    redis_client.config_resetstat()
    peers.screen(PEERS)
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_hgetall"]["calls"] == len(PEERS)
    assert stats["cmdstat_time"]["calls"] == 1


def test_the_backend_is_renewed_after_max_peers_names_and_state_survives(
    redis_client: redis.Redis,
) -> None:
    peers = PeerBreakers(client=redis_client, prefix=PREFIX, max_peers=2)
    for name in PEERS:
        eject(peers, name)
    assert [s.ejected for s in peers.statuses(PEERS)] == [True] * len(PEERS)


def test_with_redis_unreachable_no_peer_is_skipped_and_jobs_go_on(closed_port: int) -> None:
    # Given peer breakers whose Redis refuses connections (redis-py's retries off, for speed)
    client = redis.Redis(port=closed_port, retry=Retry(NoBackoff(), 0))
    peers = PeerBreakers(client=client, prefix=PREFIX)
    with capture_logs() as logs:
        # Then a screening skips nobody, and a job may pick any peer
        assert peers.screen(PEERS).order == tuple(PEERS)
        assert peers.pick("flac_fan") is not None
        # And while the outage is fresh, the next screening does not ask Redis again
        assert peers.screen(PEERS).order == tuple(PEERS)
    unreadable = [e for e in logs if e.get("event_name") == "slskd.peers_unreadable"]
    assert len(unreadable) == 1
    client.close()


# -- what a peer costs in Redis -----------------------------------------------------------------


def test_ten_thousand_ejected_peers_cost_at_most_a_kilobyte_each(redis_client: redis.Redis) -> None:
    # Given 10,000 peers ejected with the longest reason kept: 200 through PeerBreakers (picked
    # and failed as jobs do), the others byte-for-byte copies of them (bench/peer_memory.py
    # ejects all 10,000 through the code, and measures the same)
    result = peer_memory.measure(redis_client, 10_000, built=200)

    # Then each peer's key and the growth of used_memory are at most 1 KB a peer
    assert result.max_key_bytes <= peer_memory.TARGET_BYTES, result
    assert result.used_memory_bytes <= peer_memory.TARGET_BYTES, result
    assert redis_client.dbsize() == 10_000
