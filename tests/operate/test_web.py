"""``GET /health`` and ``GET /metrics`` fetched over HTTP on a free loopback port and parsed,
their values checked against the breakers' real state in Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from prometheus_client.parser import text_string_to_metric_families

from soulspot_jobs.circuit_breaker import CircuitBreaker, CircuitBreakerError, RedisBackend
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState, JobStore
from soulspot_jobs.operate.web import OperatorServer
from soulspot_jobs.settings import load_settings
from tests.polling import wait_until

from .conftest import Cli

#: Seconds an HTTP request may take.
HTTP_TIMEOUT = 10.0


def get(url: str) -> tuple[int, str, str]:
    """GET ``url``: status, content type and body, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def server(redis_url: str) -> Iterator[OperatorServer]:
    """The endpoints on a free loopback port, served from a thread, stopped afterwards."""
    breakers = {"circuit_breaker": {"failure_threshold": 2}}
    app = SoulspotJobs(load_settings(REDIS_URL=redis_url, observability=breakers))
    served = OperatorServer(app, "127.0.0.1", 0)
    served.start()
    yield served
    served.stop()
    app.close()


def test_health_is_the_healthy_document_and_200_while_every_breaker_is_closed(
    server: OperatorServer,
) -> None:
    # When /health is fetched on a fresh Redis
    status, content_type, body = get(f"{server.url}/health")

    # Then it is 200 with the design's document, every service healthy
    assert (status, content_type) == (200, "application/json")
    document = json.loads(body)
    assert document == {
        "status": "healthy",
        "services": {
            key: {"status": "healthy", "circuit_breaker": "closed", "name": name, "deferred": 0}
            for key, name in (
                ("slskd", "slskd-api"),
                ("spotify", "spotify-api"),
                ("musicbrainz", "musicbrainz-api"),
            )
        },
    }


def test_health_and_metrics_follow_the_breakers_and_deferrals_of_every_worker(
    server: OperatorServer, cli: Cli, redis_client: redis.Redis, make_worker
) -> None:
    # Given a worker process's slskd breaker: 1 success, then 2 failures opened it, 1 refusal
    backend = RedisBackend(redis_client, prefix="soulspot:breaker", local_view=False)
    config = server.app.settings.observability.circuit_breaker.config_for("slskd-api")
    slskd = CircuitBreaker("slskd-api", config, backend=backend)
    slskd.call_sync(lambda: None)
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            slskd.call_sync(lambda: 1 / 0)
    with pytest.raises(CircuitBreakerError):
        slskd.call_sync(lambda: None)
    backend.close()
    # And MusicBrainz forced OPEN by the operator, with a real worker deferring one message
    cli("open", "musicbrainz", "--for", "90")

    def declare(broker: RedisBroker) -> None:
        @dramatiq.actor(broker=broker, service="musicbrainz-api", queue_name="jobs")
        def lookup(n: int) -> None: ...

    jobs = make_worker(declare)
    jobs.broker.get_actor("lookup").send(1)
    wait_until(lambda: jobs.deferred.counts() == {"musicbrainz-api": 1}, "a deferral")
    # And job records in three states
    store = JobStore(redis_client)
    for _ in range(2):
        store.create("download", query="A - B")
    store.update(store.create("download", query="C - D").id, state=JobState.DONE)

    # When /health is fetched
    status, _, body = get(f"{server.url}/health")

    # Then it is 503 and says which services are OPEN, for how long, and what they hold back
    assert status == 503
    document = json.loads(body)
    assert document["status"] == "degraded"
    assert document["services"]["slskd"]["circuit_breaker"] == "open"
    assert 58 <= document["services"]["slskd"]["retry_after"] <= 60
    musicbrainz = document["services"]["musicbrainz"]
    assert (musicbrainz["status"], musicbrainz["circuit_breaker"]) == ("unhealthy", "open")
    assert 85 <= musicbrainz["retry_after"] <= 90
    assert musicbrainz["deferred"] == 1
    assert document["services"]["spotify"]["status"] == "healthy"

    # When /metrics is fetched and parsed
    status, content_type, text = get(f"{server.url}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    found = samples(text)

    # Then the breaker states are Redis's
    state = "soulspot_circuit_breaker_state"
    assert value(found, state, service="slskd-api", state="open") == 1
    assert value(found, state, service="slskd-api", state="closed") == 0
    assert value(found, state, service="spotify-api", state="closed") == 1
    assert value(found, "soulspot_circuit_breaker_forced_open", service="musicbrainz-api") == 1
    assert value(found, "soulspot_circuit_breaker_forced_open", service="slskd-api") == 0
    retry_after = value(found, "soulspot_circuit_breaker_retry_after_seconds", service="slskd-api")
    assert 58 <= retry_after <= 60
    # And the transitions, calls by outcome and rejections are the slskd breaker's
    transitions = "soulspot_circuit_breaker_transitions_total"
    assert value(found, transitions, service="slskd-api", to_state="open") == 1
    assert value(found, transitions, service="slskd-api", to_state="closed") == 0
    assert value(found, transitions, service="musicbrainz-api", to_state="open") == 1
    calls = "soulspot_circuit_breaker_calls_total"
    assert value(found, calls, service="slskd-api", outcome="success") == 1
    assert value(found, calls, service="slskd-api", outcome="failure") == 2
    assert value(found, "soulspot_circuit_breaker_requests_total", service="slskd-api") == 4
    assert value(found, "soulspot_circuit_breaker_rejections_total", service="slskd-api") == 1
    # And the deferral is counted as a deferral, and as a job deferred now
    assert value(found, "soulspot_deferrals_total", service="musicbrainz-api") == 1
    assert value(found, "soulspot_deferrals_total", service="slskd-api") == 0
    assert value(found, "soulspot_deferred_jobs", service="musicbrainz-api") == 1
    # And the jobs are counted by state
    assert value(found, "soulspot_jobs", state="queued") == 2
    assert value(found, "soulspot_jobs", state="done") == 1
    assert value(found, "soulspot_jobs", state="failed") == 0
    # And no gauge is negative
    assert all(v >= 0 for v in found.values())


def test_an_unknown_path_is_404(server: OperatorServer) -> None:
    status, _, body = get(f"{server.url}/healthz")
    assert status == 404
    assert "try /, /health or /metrics" in json.loads(body)["error"]


def test_serve_answers_on_its_port_and_stops_cleanly_on_sigterm(
    redis_url: str, tmp_path: Path
) -> None:
    # Given a free loopback port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    # When `soulspot-jobs serve` runs as its own process
    env = {**os.environ, "REDIS_URL": redis_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "soulspot_jobs.operate.cli", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/health"

        def answers() -> bool:
            try:
                return get(url)[0] == 200
            except OSError:
                return False

        # Then /health answers 200
        wait_until(answers, "serve to answer", 20.0)
    finally:
        # And SIGTERM stops it, exit status 0
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert f"serving http://127.0.0.1:{port}/ (read-only" in stderr
    assert f"http://127.0.0.1:{port}/health" in stderr
