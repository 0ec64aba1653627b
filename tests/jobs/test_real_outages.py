"""End to end against the ways real services fail that are not a refused connection or a 5xx:
wrong credentials, slskd logged out of Soulseek, slskd restarting, transfers removed, peers'
queues that never move. Real Worker, real Redis, the fakes behaving as the real services."""

from __future__ import annotations

from urllib.parse import quote

import httpx
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.spotify import DEFAULT_CLIENT_SECRET, DEMO_PLAYLIST
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.credentials import check_credentials
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.operate.health import read_health
from soulspot_jobs.operate.metrics import registry_for
from tests.jobs.conftest import Fakes, finished, running, settings_for
from tests.polling import wait_until

DAFT_PUNK = CATALOG[0]
QUERY = f"{DAFT_PUNK.artist} - {DAFT_PUNK.title}"
#: The breaker's timeout in these tests: a deferred job comes back this soon.
TIMEOUT = 1.0


def _deferred(app: SoulspotJobs, job_id: str) -> bool:
    return app.job(job_id).state is JobState.DEFERRED


def test_a_wrong_slskd_api_key_defers_the_jobs_and_says_which_setting_until_it_is_fixed(
    redis_url: str, fakes: Fakes
) -> None:
    """slskd answers 401 with an empty body to a request without a valid ``X-API-Key``
    (slskd's ``ApiKeyAuthenticationHandler``): the settings are wrong, not the job."""
    # Given slskd expecting another key than the workers send
    fakes.slskd.api_key = "the-right-key"
    app = SoulspotJobs(settings_for(redis_url, fakes, timeout=TIMEOUT))
    with running(app):
        # When a download is enqueued
        job_id = app.enqueue_download(QUERY)
        wait_until(lambda: _deferred(app, job_id), "the job to be deferred", 15)

        # Then it is deferred, not failed, no retry spent; the breaker is OPEN and says why
        job = app.job(job_id)
        assert job.state is JobState.DEFERRED
        assert "answered 401 Unauthorized" in job.last_error
        stats = app.breakers["slskd-api"].stats
        assert stats.state is CircuitState.OPEN
        assert stats.reason == "unauthorized (check SLSKD_API_KEY)"
        health = read_health(app.breakers, app.deferred)
        assert health["services"]["slskd"]["reason"] == "unauthorized (check SLSKD_API_KEY)"
        metrics = generate_latest(registry_for(app)).decode()
        assert (
            'soulspot_circuit_breaker_reason{reason="unauthorized (check SLSKD_API_KEY)",'
            'service="slskd-api"} 1.0'
        ) in metrics

        # When the operator fixes the key, then the job runs to the end
        fakes.slskd.api_key = "test-key"
        [job] = finished(app, [job_id], timeout=30)
    assert job.state is JobState.DONE, job
    assert not job.details.get("download_failures")


def test_a_wrong_spotify_client_secret_defers_the_playlist_import_naming_the_settings(
    redis_url: str, fakes: Fakes
) -> None:
    """Spotify's accounts service answers a wrong client secret ``400 {"error":
    "invalid_client"}`` (Spotify's Authorization guide, client-credentials flow)."""
    # Given Spotify expecting another client secret
    fakes.spotify.client_secret = "another-secret"
    app = SoulspotJobs(settings_for(redis_url, fakes, timeout=TIMEOUT))
    with running(app):
        # When a playlist import is enqueued
        job_id = app.enqueue_playlist(DEMO_PLAYLIST)
        wait_until(lambda: _deferred(app, job_id), "the import to be deferred", 15)

        # Then it is deferred and the breaker names both settings
        stats = app.breakers["spotify-api"].stats
        assert stats.state is CircuitState.OPEN
        assert stats.reason == "unauthorized (check SPOTIFY_CLIENT_ID/SPOTIFY_CLIENT_SECRET)"
        assert "invalid_client" in app.job(job_id).last_error
        assert app.job(job_id).state is JobState.DEFERRED


def test_a_wrong_spotify_client_secret_shows_unauthorized_in_health_until_it_is_fixed(
    redis_url: str, fakes: Fakes
) -> None:
    """Spotify's accounts service answers a wrong client secret ``400 {"error":
    "invalid_client"}`` (Spotify's Authorization guide, client-credentials flow): the
    settings are wrong, not the job, so /health says so and the job waits for the fix."""
    # Given Spotify expecting another client secret
    fakes.spotify.client_secret = "another-secret"
    app = SoulspotJobs(settings_for(redis_url, fakes, timeout=TIMEOUT))
    with running(app):
        # When a playlist import is enqueued
        job_id = app.enqueue_playlist(DEMO_PLAYLIST)
        wait_until(lambda: _deferred(app, job_id), "the import to be deferred", 15)

        # Then /health's document shows Spotify unauthorized, naming the settings
        spotify = read_health(app.breakers, app.deferred)["services"]["spotify"]
        assert spotify["circuit_breaker"] == "open"
        assert spotify["reason"].startswith("unauthorized")
        assert "SPOTIFY_CLIENT_SECRET" in spotify["reason"]

        # When the operator fixes the secret, then the deferred import runs to the end
        fakes.spotify.client_secret = DEFAULT_CLIENT_SECRET
        [job] = finished(app, [job_id], timeout=30)
    assert job.state is JobState.DONE, job
    assert job.details["tracks"] > 0
    assert not [entry for entry in job.history if entry.get("state") == "failed"]


def test_a_peer_queue_past_its_deadline_is_cancelled_in_slskd_and_the_next_candidate_tried(
    redis_url: str, fakes: Fakes
) -> None:
    """A download slskd reports ``Queued, Remotely`` waits in the peer's upload queue, which
    can take hours (Soulseek.NET ``TransferStates.Queued | Remotely``)."""
    # Given transfers that sit in the peer's queue for several seconds, and a deadline of 0.5 s
    fakes.slskd.transfer_duration = 20.0
    settings = settings_for(redis_url, fakes)
    settings.slskd.remote_queue_timeout = 0.5
    settings.slskd.max_candidates = 2
    app = SoulspotJobs(settings)
    with running(app):
        # When a download is enqueued
        [job] = finished(app, [app.enqueue_download(QUERY)], timeout=30)

    # Then each candidate's download was cancelled past the deadline, then the next tried
    assert job.state is JobState.FAILED
    failures = job.details["download_failures"]
    assert len(failures) == 2
    assert all("queued at the peer for more than 0.5 s; cancelled" in f for f in failures)
    cancels = [path for method, path in fakes.slskd.requests if method == "DELETE"]
    assert len(cancels) == 2


def test_the_start_up_check_opens_the_breaker_of_a_service_refusing_our_credentials(
    redis_url: str, fakes: Fakes
) -> None:
    """The check a worker runs at start (``soulspot-jobs worker``), one line per service."""
    # Given slskd refusing our key, Spotify and MusicBrainz as configured
    fakes.slskd.api_key = "the-right-key"
    app = SoulspotJobs(settings_for(redis_url, fakes))
    try:
        # When the credentials are checked
        with capture_logs() as logs:
            results = check_credentials(app.runtime)

        # Then one line per service, slskd's naming the setting, and its breaker is OPEN
        by_service = {result.service: result for result in results}
        assert set(by_service) == {"slskd-api", "spotify-api", "musicbrainz-api"}
        assert not by_service["slskd-api"].ok
        assert "unauthorized (check SLSKD_API_KEY)" in by_service["slskd-api"].line
        assert by_service["spotify-api"].ok
        assert "SPOTIFY_CLIENT_ID/SPOTIFY_CLIENT_SECRET accepted" in by_service["spotify-api"].line
        assert "User-Agent" in by_service["musicbrainz-api"].line
        lines = [entry for entry in logs if entry["event_name"].startswith("credentials.")]
        assert len(lines) == 3
        stats = app.breakers["slskd-api"].stats
        assert (stats.state, stats.reason) == (
            CircuitState.OPEN,
            "unauthorized (check SLSKD_API_KEY)",
        )
        assert app.breakers["spotify-api"].stats.state is CircuitState.CLOSED
    finally:
        app.close()


def test_slskd_logged_out_of_soulseek_defers_the_jobs_until_it_logs_in_again(
    redis_url: str, fakes: Fakes
) -> None:
    """slskd's ``SearchesController`` answers 409 with Soulseek.NET's "The server connection
    must be connected and logged in to perform a search" while slskd is not logged in."""
    # Given slskd up but logged out of the Soulseek network
    fakes.slskd.logged_out(True)
    app = SoulspotJobs(settings_for(redis_url, fakes, timeout=TIMEOUT))
    with running(app):
        # When a download is enqueued
        job_id = app.enqueue_download(QUERY)
        wait_until(lambda: _deferred(app, job_id), "the job to be deferred", 15)

        # Then it is deferred (no retry, nothing failed) and the breaker says why
        stats = app.breakers["slskd-api"].stats
        assert (stats.state, stats.reason) == (CircuitState.OPEN, "not logged in to Soulseek")
        assert "must be connected and logged in" in app.job(job_id).last_error
        health = read_health(app.breakers, app.deferred)
        assert health["services"]["slskd"]["reason"] == "not logged in to Soulseek"

        # When slskd logs in again, then the job runs to the end
        fakes.slskd.logged_out(False)
        [job] = finished(app, [job_id], timeout=30)
    assert job.state is JobState.DONE, job
    assert not job.details.get("download_failures")
    assert not [entry for entry in job.history if entry.get("state") == "failed"]


def test_slskd_logged_out_after_the_search_defers_the_enqueue_until_it_logs_in_again(
    redis_url: str, fakes: Fakes
) -> None:
    """While slskd is not logged in, its enqueue endpoints answer 500 with Soulseek.NET's
    "The server connection must be connected and logged in to fetch user endpoint"
    (``TransfersController.EnqueueAsync`` turns the library's exception into a 500;
    ``SoulseekClient.GetUserEndPointAsync``): an slskd outage, not the peer's failure."""
    # Given a search slow enough to log slskd out of Soulseek before it ends
    fakes.slskd.search_duration = 1.0
    app = SoulspotJobs(settings_for(redis_url, fakes, timeout=TIMEOUT))
    with running(app):
        job_id = app.enqueue_download(QUERY)
        wait_until(lambda: app.job(job_id).details.get("search_id"), "the search to start", 15)
        # When slskd loses its Soulseek session while the search runs
        fakes.slskd.logged_out(True)
        wait_until(lambda: _deferred(app, job_id), "the enqueue to be deferred", 15)

        # Then the enqueue was deferred (no retry spent, no peer blamed), the breaker says why
        job = app.job(job_id)
        assert job.details.get("candidates"), "deferred before the search was ranked"
        assert "fetch user endpoint" in job.last_error
        assert not job.details.get("failed_peers")
        stats = app.breakers["slskd-api"].stats
        assert (stats.state, stats.reason) == (CircuitState.OPEN, "not logged in to Soulseek")
        enqueues = [request.status for request in fakes.slskd.enqueue_requests]
        assert enqueues and all(status == 500 for status in enqueues), enqueues

        # When slskd logs in again, then the job runs to the end from its first candidate
        fakes.slskd.logged_out(False)
        [job] = finished(app, [job_id], timeout=30)
    assert job.state is JobState.DONE, job
    assert job.details["candidate_index"] == 0
    assert not job.details.get("download_failures")
    assert not [entry for entry in job.history if entry.get("state") == "failed"]
    assert len(fakes.slskd.completed_downloads()) == 1


def test_a_restart_of_slskd_mid_download_downloads_each_file_once(
    redis_url: str, fakes: Fakes
) -> None:
    """slskd ends its active transfers ``Completed, Errored`` ("Application shut down") when
    it starts again and enqueues them again under new ids once logged in (``Application.cs``);
    a file already being downloaded is not enqueued twice (``DownloadService.EnqueueAsync``)."""
    # Given downloads that take 3 s
    fakes.slskd.transfer_duration = 3.0
    app = SoulspotJobs(settings_for(redis_url, fakes, timeout=TIMEOUT))
    tracks = CATALOG[:3]
    with running(app):
        job_ids = [app.enqueue_download(f"{t.artist} - {t.title}") for t in tracks]

        def all_downloading() -> bool:
            return all(app.job(job_id).details.get("transfer_id") for job_id in job_ids)

        wait_until(all_downloading, "every job to be downloading", 20)
        # When slskd restarts, down for a second
        fakes.slskd.restart(downtime=1.0)
        jobs = finished(app, job_ids, timeout=40)

    # Then every job is done, from its first candidate, and each file was downloaded once
    assert [job.state for job in jobs] == [JobState.DONE] * len(tracks), jobs
    assert all(not job.details.get("download_failures") for job in jobs)
    assert fakes.slskd.restarts == 1
    downloaded = fakes.slskd.completed_downloads()
    assert len(downloaded) == len(tracks) == len(set(downloaded)), downloaded


def _remove(fakes: Fakes, username: str, transfer_id: str, *, gone: bool = False) -> None:
    """``DELETE .../downloads/{username}/{id}?remove=true``, as slskd's UI or an operator
    (``gone``: the transfer may already be deleted for good, a 404)."""
    response = httpx.delete(
        f"{fakes.slskd.url}/api/v0/transfers/downloads/{quote(username, safe='')}/{transfer_id}",
        params={"remove": "true"},
        headers={"X-API-Key": fakes.slskd.api_key},
    )
    assert response.status_code in ((204, 404) if gone else (204,)), response.text


def test_a_transfer_removed_after_it_succeeded_still_counts_as_downloaded(
    redis_url: str, fakes: Fakes
) -> None:
    """slskd removes softly: a removed transfer is still answered by id, ``"removed": true``
    (``DownloadService.Remove``, ``TransfersController.GetDownload``)."""
    # Given a job that looks at its download every 3 s, and downloads of 0.3 s
    settings = settings_for(redis_url, fakes)
    settings.slskd.download_poll_interval = 3.0
    app = SoulspotJobs(settings)
    with running(app):
        job_id = app.enqueue_download(QUERY)
        wait_until(lambda: fakes.slskd.completed_downloads(), "the download to succeed", 20)
        # When the transfer is removed before the job looks again
        details = app.job(job_id).details
        _remove(fakes, details["username"], details["transfer_id"])
        [job] = finished(app, [job_id], timeout=30)

    # Then the job went on with the file it has, from the same candidate
    assert job.state is JobState.DONE, job
    assert job.details["transfer_id"] == details["transfer_id"]
    assert len(fakes.slskd.completed_downloads()) == 1


def test_a_transfer_deleted_for_good_before_it_finished_is_enqueued_again(
    redis_url: str, fakes: Fakes
) -> None:
    """A server that deletes a removed transfer for good answers its id 404; a running
    transfer is first cancelled, then removed (``TransfersController.CancelDownloadAsync``)."""
    # Given slskd deleting for good, downloads of 4 s, a job looking every 2 s
    fakes.slskd.hard_delete = True
    fakes.slskd.transfer_duration = 4.0
    settings = settings_for(redis_url, fakes)
    settings.slskd.download_poll_interval = 2.0
    app = SoulspotJobs(settings)
    with running(app):
        job_id = app.enqueue_download(QUERY)
        wait_until(lambda: app.job(job_id).details.get("transfer_id"), "a transfer", 20)
        # When the running transfer is cancelled and deleted
        details = app.job(job_id).details
        _remove(fakes, details["username"], details["transfer_id"])
        _remove(fakes, details["username"], details["transfer_id"], gone=True)
        [job] = finished(app, [job_id], timeout=30)

    # Then the same file from the same peer was enqueued again, and downloaded once
    assert job.state is JobState.DONE, job
    assert job.details["username"] == details["username"]
    assert job.details["same_file_requeues"] == 1
    assert job.details["transfer_id"] != details["transfer_id"]
    assert not job.details.get("download_failures")
    assert len(fakes.slskd.completed_downloads()) == 1


def _state_of(fakes: Fakes, transfer_id: str) -> str:
    """The transfer's state as slskd answers it by id."""
    response = httpx.get(
        f"{fakes.slskd.url}/api/v0/transfers/downloads/anyone/{transfer_id}",
        headers={"X-API-Key": fakes.slskd.api_key},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["state"])


def test_a_running_transfer_cancelled_and_removed_in_slskd_moves_on_to_the_next_candidate(
    redis_url: str, fakes: Fakes
) -> None:
    """slskd removes only ended downloads (``DownloadService.Remove`` throws "Invalid attempt
    to remove a download before it is complete"): an operator's ``DELETE ...?remove=true`` of a
    running one cancels it, and a second one removes it, softly (``TransfersController``)."""
    # Given downloads of 4 s, and a job looking every 2 s
    fakes.slskd.transfer_duration = 4.0
    settings = settings_for(redis_url, fakes)
    settings.slskd.download_poll_interval = 2.0
    app = SoulspotJobs(settings)
    with running(app):
        job_id = app.enqueue_download(QUERY)
        wait_until(lambda: app.job(job_id).details.get("transfer_id"), "a transfer", 20)
        # When the unfinished transfer is cancelled and removed before the job looks again
        details = app.job(job_id).details
        _remove(fakes, details["username"], details["transfer_id"])
        _remove(fakes, details["username"], details["transfer_id"])
        [job] = finished(app, [job_id], timeout=30)
        first_peer = app.runtime.peers.stats(details["username"])

    # Then the job went on to the next candidate and is done, never failed
    assert job.state is JobState.DONE, job
    assert job.details["username"] != details["username"]
    assert job.details["download_failures"] == [
        f"{details['username']}: Completed, Cancelled: Transfer cancelled"
    ]
    assert not [entry for entry in job.history if entry.get("state") == "failed"]
    # And the cancelled file was not downloaded: one file on disk, from the next peer
    assert fakes.slskd.completed_downloads() == [(job.details["username"], job.details["filename"])]
    # And the cancellation is not held against the first peer
    assert first_peer.total_failures == 0


def test_a_transfer_removed_after_it_failed_moves_on_to_the_next_candidate(
    redis_url: str, fakes: Fakes
) -> None:
    """A failed download stays ``Completed, Errored`` with its exception when removed: slskd
    marks the record ``"removed": true`` and still answers it by id (``DownloadService.Remove``,
    ``TransfersController.GetDownload``)."""
    # Given the first download failing at once, and a job looking every 3 s
    fakes.slskd.fail_downloads(1)
    settings = settings_for(redis_url, fakes)
    settings.slskd.download_poll_interval = 3.0
    app = SoulspotJobs(settings)
    with running(app):
        job_id = app.enqueue_download(QUERY)
        wait_until(lambda: app.job(job_id).details.get("transfer_id"), "a transfer", 20)
        details = app.job(job_id).details
        wait_until(
            lambda: _state_of(fakes, details["transfer_id"]) == "Completed, Errored",
            "the first download to fail",
            20,
        )
        # When the failed transfer is removed before the job looks again
        _remove(fakes, details["username"], details["transfer_id"])
        [job] = finished(app, [job_id], timeout=30)

    # Then the job went on to the next candidate and is done, never failed
    assert job.state is JobState.DONE, job
    assert job.details["candidate_index"] == 1
    assert job.details["username"] != details["username"]
    [failure] = job.details["download_failures"]
    assert failure.startswith(f"{details['username']}: Completed, Errored: ")
    assert not job.details.get("same_file_requeues")
    assert not [entry for entry in job.history if entry.get("state") == "failed"]
    assert len(fakes.slskd.completed_downloads()) == 1
