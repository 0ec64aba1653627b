"""Per-peer breakers end to end: what one download job learns of a Soulseek peer, the next jobs
know. Real Worker, real Redis, the fake slskd over loopback."""

from __future__ import annotations

import redis
from structlog.testing import capture_logs

from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.circuit_breaker.peers import Pick
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from tests.jobs.conftest import Fakes, finished, running, settings_for
from tests.polling import wait_until

DAFT_PUNK = CATALOG[0]
QUERY = f"{DAFT_PUNK.artist} - {DAFT_PUNK.title}"
OTHER = f"{CATALOG[1].artist} - {CATALOG[1].title}"
#: The fake's peers, in the order the jobs rank their files.
RANKED = ["lossless_lover", "mp3 archive", "slow_peer", "old_rips"]


def test_a_dead_peer_found_by_one_job_is_skipped_by_the_next_jobs_of_another_worker(
    redis_url: str, redis_client: redis.Redis, fakes: Fakes
) -> None:
    # Given the best peer offline, and peers ejected at their first failure
    fakes.slskd.peers_offline("lossless_lover")
    settings = settings_for(redis_url, fakes, slskd_peer={"failure_threshold": 1})
    first = SoulspotJobs(settings)

    # When one worker's job meets the dead peer
    with capture_logs() as logs, running(first):
        [met] = finished(first, [first.enqueue_download(QUERY)])

    # Then it moved on to the next peer, and the peer was ejected, saying why, for a while
    assert (met.state, met.details["failed_peers"]) == (JobState.DONE, ["lossless_lover"])
    ejected = [e["event"] for e in logs if e.get("event_name") == "slskd.peer_ejected"]
    assert ejected == ["slskd peer lossless_lover skipped for 600 s: offline"]
    key = f"{first.keys.peer_breakers}:lossless_lover"
    assert 0 < redis_client.pttl(key) <= settings.slskd.peer_idle_expiry * 1000

    # And when another worker (its own broker, client and backend) downloads two tracks
    second = SoulspotJobs(settings)
    with running(second):
        jobs = finished(second, [second.enqueue_download(QUERY) for _ in range(2)])

    # Then neither tried the dead peer: it was asked once in all
    for job in jobs:
        assert job.state is JobState.DONE, job
        [skipped] = job.details["skipped_peers"]
        assert skipped.startswith("lossless_lover: offline, ") and skipped.endswith(" s left")
        assert "failed_peers" not in job.details
        assert job.details["username"] == "mp3 archive"
    enqueues = [request.username for request in fakes.slskd.enqueue_requests]
    assert enqueues.count("lossless_lover") == 1


def test_a_search_whose_peers_are_all_ejected_still_downloads_from_the_least_recently_ejected(
    redis_url: str, fakes: Fakes
) -> None:
    # Given every peer of the track ejected, old_rips first and lossless_lover last
    app = SoulspotJobs(settings_for(redis_url, fakes, slskd_peer={"failure_threshold": 1}))
    peers = app.runtime.peers
    for name in reversed(RANKED):
        peers.failed(Pick(name), "offline")
    assert all(status.ejected for status in peers.statuses(RANKED))

    # When a track is downloaded
    with running(app):
        [job] = finished(app, [app.enqueue_download(QUERY)])
        stats = peers.stats("old_rips")

    # Then half the peers were skipped (the most recently ejected), the other half tried, least
    # recently ejected first, and the download worked: that peer is back
    assert job.state is JobState.DONE, job
    assert [entry.split(":")[0] for entry in job.details["skipped_peers"]] == [
        "mp3 archive",
        "lossless_lover",
    ]
    assert job.details["forced_peers"] == ["old_rips", "slow_peer"]
    assert [c["username"] for c in job.details["candidates"]] == ["old_rips", "slow_peer"]
    assert job.details["username"] == "old_rips"
    assert stats.state is CircuitState.CLOSED


def test_failing_transfers_eject_their_peer_and_slskds_own_failures_count_against_none(
    redis_url: str, fakes: Fakes
) -> None:
    # Given the best peer rejecting every transfer, and slskd failing to add the next two
    # downloads itself (its database is locked: no peer's fault)
    fakes.slskd.fail_downloads_from(
        "lossless_lover", state="Completed, Rejected", exception="Transfer rejected: Banned"
    )
    app = SoulspotJobs(settings_for(redis_url, fakes, slskd_peer={"failure_threshold": 1}))
    peers = app.runtime.peers
    with running(app):
        # When one track is downloaded, then another while slskd fails to add files
        [rejected] = finished(app, [app.enqueue_download(QUERY)])
        fakes.slskd.fail_enqueues(2)
        [declined] = finished(app, [app.enqueue_download(OTHER)])

    # Then the rejecting peer was ejected with the transfer's reason
    assert rejected.state is JobState.DONE, rejected
    status = peers.statuses(["lossless_lover"])[0]
    assert status.ejected
    assert status.reason == "transfer rejected: Transfer rejected: Banned"
    # And the peers slskd failed to enqueue from were passed over, but not counted against
    assert declined.state is JobState.DONE, declined
    assert declined.details["failed_peers"] == ["mp3 archive", "slow_peer"]
    for name in ("mp3 archive", "slow_peer"):
        assert peers.stats(name).total_failures == 0
        assert not peers.statuses([name])[0].ejected


def test_a_half_open_peer_gets_its_trial_from_the_job_that_picks_it(
    redis_url: str, fakes: Fakes
) -> None:
    # Given the best peer ejected for 0.3 s, and that period over
    breaker = {"slskd_peer": {"failure_threshold": 1, "timeout": 0.3}}
    app = SoulspotJobs(settings_for(redis_url, fakes, **breaker))
    peers = app.runtime.peers
    peers.failed(Pick("lossless_lover"), "offline")
    wait_until(
        lambda: peers.statuses(["lossless_lover"])[0].state is CircuitState.HALF_OPEN,
        "the peer's period to end",
        5.0,
    )

    # When a track is downloaded
    with running(app):
        [job] = finished(app, [app.enqueue_download(QUERY)])
        stats = peers.stats("lossless_lover")

    # Then the job took the peer's trial, the transfer worked, and the peer is back
    assert job.state is JobState.DONE, job
    assert job.details["username"] == "lossless_lover"
    assert "skipped_peers" not in job.details or not job.details["skipped_peers"]
    assert stats.state is CircuitState.CLOSED
    assert stats.transitions.get("half_open") == 1
