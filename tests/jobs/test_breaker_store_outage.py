"""The breakers' store unreachable during an upstream outage: under the "allow" policy each worker
process keeps breakers of its own, so the jobs are still deferred, not failed (the jobs app with a
real Worker, its breakers in a Redis that is down, the fake upstreams over loopback)."""

from __future__ import annotations

import httpx
import pytest
from structlog.testing import capture_logs

from soulspot_jobs.circuit_breaker import RedisBackend
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.operate.health import LOCAL_BREAKERS, http_status, read_health
from soulspot_jobs.operate.web import OperatorServer
from tests.jobs.conftest import Fakes, finished, running, settings_for

#: Jobs enqueued during the outage.
JOBS = 8
#: Seconds slskd refuses connections.
OUTAGE = 4.0


@pytest.mark.faults
def test_an_upstream_outage_while_the_breaker_store_is_down_still_defers_the_jobs(
    redis_url: str, fakes: Fakes, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Given workers whose breakers live in a Redis of their own that is down (policy "allow"),
    # two failures opening a breaker for 1 s
    store = RedisBackend.from_url(f"redis://127.0.0.1:{closed_port}/0")
    settings = settings_for(redis_url, fakes, failure_threshold=2, timeout=1.0)
    app = SoulspotJobs(settings, backend=store)
    try:
        with capture_logs() as logs, running(app):
            # When slskd refuses every connection while the downloads come
            fakes.slskd.faults.outage(OUTAGE, mode="refuse")
            job_ids = [
                app.enqueue_download(f"{t.artist} - {t.title}")
                for t in (CATALOG * 2)[:JOBS]
            ]

            # Then every job is done once slskd is back, none failed
            jobs = finished(app, job_ids)
    finally:
        app.close()
        store.close()
    assert [job.state for job in jobs] == [JobState.DONE] * JOBS
    # And this process's own slskd breaker opened and deferred them, no retry spent on that
    events = [entry["event_name"] for entry in logs]
    assert "circuit_breaker.opened" in events
    deferred = [e for e in logs if e["event_name"] == "job.deferred"]
    assert deferred and all(e["service"] == "slskd-api" for e in deferred)
    local = [e for e in logs if e["event_name"] == "circuit_breaker.store_unavailable"]
    assert local and all(e["state"] == "local" for e in local)
    # And retries went only to calls that ran and failed while it was closing in (each worker
    # thread's call in flight, each failed trial); the rest were deferrals, which spend none
    retries = [r for r in caplog.records if r.getMessage().startswith("Retrying message")]
    print(f"{len(retries)} retries, {len(deferred)} deferrals")
    assert len(retries) < len(deferred)


def test_health_and_the_page_say_the_breakers_are_local_while_their_store_is_down(
    redis_url: str, fakes: Fakes, closed_port: int
) -> None:
    # Given the jobs app with its breakers in a Redis that is down (policy "allow")
    store = RedisBackend.from_url(f"redis://127.0.0.1:{closed_port}/0")
    app = SoulspotJobs(settings_for(redis_url, fakes), backend=store)
    server = OperatorServer(app, "127.0.0.1", 0)
    server.start()
    try:
        # When the health document is read, in Python and over HTTP
        document = read_health(app.breakers, app.deferred)
        answer = httpx.get(f"{server.url}/health", timeout=10)
    finally:
        server.stop()
        app.close()
        store.close()

    # Then it says the breakers are local, each service's state unknown, and 503
    assert document["store"] == LOCAL_BREAKERS
    assert {entry["circuit_breaker"] for entry in document["services"].values()} == {"local"}
    assert http_status(document) == 503
    assert answer.status_code == 503 and answer.json()["store"] == LOCAL_BREAKERS
