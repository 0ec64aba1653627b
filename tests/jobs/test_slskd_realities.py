"""End to end against what real slskd does: offline peers and a search that reads complete before
its responses are stored. Real Worker, real Redis, the fake upstreams over loopback."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.spotify import DEMO_PLAYLIST
from soulspot_jobs.jobs.actors import downloads
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from tests.jobs.conftest import Fakes, finished, running, settings_for

DAFT_PUNK = CATALOG[0]


class StateWatch:
    """Reads a breaker's state in a loop until stopped; remembers every state it saw."""

    def __init__(self, read: Callable[[], CircuitState]) -> None:
        self._read = read
        self.seen: set[CircuitState] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen.add(self._read())
            self._stop.wait(0.01)

    def __enter__(self) -> StateWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_playlist_whose_best_peers_are_offline_completes_from_other_candidates_with_the_breaker_closed(  # noqa: E501
    redis_url: str, fakes: Fakes
) -> None:
    # Given the two best peers of every track offline (the FLAC one, then the free 320 one),
    # more peer failures in all than the slskd breaker's threshold (and peer breakers that
    # never eject, so that every job meets both: test_peer_breakers.py shows them skipped)
    fakes.slskd.peers_offline("lossless_lover")
    fakes.slskd.peers_offline("mp3 archive", reason="unreachable")
    app = SoulspotJobs(
        settings_for(redis_url, fakes, failure_threshold=3, slskd_peer={"failure_threshold": 99})
    )
    breaker = app.breakers["slskd-api"]
    assert 2 * len(CATALOG) > breaker.config.failure_threshold
    # (two worker threads: slskd's limit of two enqueues at once never defers one here)
    with (
        capture_logs() as logs,
        running(app, threads=2),
        StateWatch(lambda: breaker.state) as watch,
    ):
        # When the demo playlist is imported
        [playlist] = finished(app, [app.enqueue_playlist(DEMO_PLAYLIST)])
        tracks = finished(app, playlist.details["jobs"], timeout=60)
        stats = breaker.stats

    # Then every track was downloaded from the third candidate, each offline peer tried once
    assert [job.state for job in tracks] == [JobState.DONE] * len(CATALOG), tracks
    for job in tracks:
        assert job.details["username"] == "slow_peer"
        assert job.details["failed_peers"] == ["lossless_lover", "mp3 archive"]
        assert job.details["download_failures"][0].endswith("appears to be offline")
        assert "Failed to connect to user mp3 archive" in job.details["download_failures"][1]
    enqueues = [request.username for request in fakes.slskd.enqueue_requests]
    for peer in ("lossless_lover", "mp3 archive"):
        assert enqueues.count(peer) == len(CATALOG)
    # And the slskd breaker stayed CLOSED throughout, having counted no failure
    assert watch.seen == {CircuitState.CLOSED}
    assert (stats.state, stats.total_failures) == (CircuitState.CLOSED, 0)
    assert not [e for e in logs if e.get("event_name") == "circuit_breaker.opened"]
    assert not [e for e in logs if e.get("event_name") == "job.deferred"]


def test_a_job_whose_every_candidate_is_offline_fails_with_every_reason(
    redis_url: str, fakes: Fakes
) -> None:
    # Given every peer offline
    fakes.slskd.peers_offline(*[peer.username for peer in fakes.slskd.peers])
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # When a track is downloaded
        [job] = finished(app, [app.enqueue_download(f"{DAFT_PUNK.artist} - {DAFT_PUNK.title}")])

    # Then the job failed once its candidates were exhausted, naming each peer and reason
    assert job.state is JobState.FAILED
    assert job.last_error.startswith("every candidate failed: ")
    assert len(job.details["failed_peers"]) == len(job.details["candidates"]) == 3
    for peer in job.details["failed_peers"]:
        assert f"{peer}: User {peer} appears to be offline" in job.last_error
    assert app.breakers["slskd-api"].stats.total_failures == 0


def test_a_search_that_reports_complete_early_still_finds_its_files(
    redis_url: str, fakes: Fakes
) -> None:
    # Given an slskd whose searches read complete 1 s before their responses are stored, and
    # workers that look at a search every 0.1 s
    fakes.slskd.early_complete(1.0)
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # When a track is downloaded
        [job] = finished(app, [app.enqueue_download(f"{DAFT_PUNK.artist} - {DAFT_PUNK.title}")])

    # Then the job read the empty answer of the complete search, looked again, and found the FLAC
    assert job.state is JobState.DONE, job
    assert job.details["empty_reads"] >= 1
    assert job.details["filename"].endswith(".flac")
    assert job.details["search_state"] == "Completed, ResponseLimitReached"


def test_a_search_that_ends_with_no_file_fails_without_waiting_for_more(
    redis_url: str, fakes: Fakes
) -> None:
    # Given a track nobody shares
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # When it is downloaded
        [job] = finished(app, [app.enqueue_download("Nobody - Nothing At All")])

    # Then the job failed at the first answer read after slskd recorded the end
    assert job.state is JobState.FAILED
    assert "slskd found no audio file for 'Nobody - Nothing At All'" in job.last_error
    assert "empty_reads" not in job.details


def test_a_complete_search_whose_end_is_never_recorded_fails_after_the_patience(
    redis_url: str, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an slskd that would store the responses only a minute after the search completed,
    # and jobs that wait half a second for that
    monkeypatch.setattr(downloads, "EMPTY_ANSWER_PATIENCE", 0.5)
    fakes.slskd.early_complete(60.0)
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # When a track is downloaded
        [job] = finished(app, [app.enqueue_download(f"{DAFT_PUNK.artist} - {DAFT_PUNK.title}")])

    # Then it looked again for the patience, then failed saying why
    assert job.state is JobState.FAILED
    assert job.details["empty_reads"] >= 2
    assert "slskd had not recorded the search's end after 0.5 s" in job.last_error


def test_an_enqueue_deferred_by_back_pressure_goes_on_with_the_same_candidates(
    redis_url: str, fakes: Fakes
) -> None:
    # Given an slskd busy with other enqueues at the first attempt, and the best peer offline
    fakes.slskd.busy_enqueues(1)
    fakes.slskd.peers_offline("lossless_lover")
    app = SoulspotJobs(settings_for(redis_url, fakes))
    with running(app):
        # When a track is downloaded
        [job] = finished(app, [app.enqueue_download(f"{DAFT_PUNK.artist} - {DAFT_PUNK.title}")])

    # Then the deferred step went on from the candidates it had (one search, no new ranking),
    # skipped the offline peer and downloaded from the next one
    assert job.state is JobState.DONE, job
    assert len(fakes.slskd.search_requests) == 1
    posts = [path for method, path in fakes.slskd.requests if method == "POST"]
    assert posts.count("/api/v0/transfers/downloads/batches") == 3  # 429, 404, then 201
    answers = [(request.username, request.status) for request in fakes.slskd.enqueue_requests]
    assert ("lossless_lover", 404) in answers and ("mp3 archive", 201) in answers
    assert job.details["failed_peers"] == ["lossless_lover"]
    assert job.details["username"] == "mp3 archive"
    assert app.breakers["slskd-api"].stats.total_failures == 0
