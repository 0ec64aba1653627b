"""``status``, ``reset`` and ``open``: what the breakers show, and the operator's switches,
cluster-wide through Redis."""

from __future__ import annotations

import time

import pytest
import redis
from prometheus_client import generate_latest

from soulspot_jobs.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    RedisBackend,
)
from soulspot_jobs.circuit_breaker.peers import PeerBreakers, Pick
from soulspot_jobs.deferral.index import DeferredJob, RedisDeferredIndex
from soulspot_jobs.errors import ServiceOutage, UnauthorizedError
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.keys import Keys
from soulspot_jobs.operate.metrics import registry_for
from soulspot_jobs.settings import load_settings
from tests.polling import wait_until

from .conftest import Cli

#: The breakers' key prefix with the default key prefix.
BREAKER_PREFIX = "soulspot:breaker"
#: How ``open --for`` refuses a period it cannot store.
BAD_PERIOD = (
    "error: --for: a forced-open period must be a number of seconds more than 0 and at most "
    "604800 (7 days)"
)


class Down(Exception):
    """The service failed."""


def fail() -> None:
    raise Down


def closed_service(name: str) -> dict[str, object]:
    return {"status": "healthy", "circuit_breaker": "closed", "name": name, "deferred": 0}


def test_status_json_on_a_fresh_redis_is_the_healthy_health_document(cli: Cli) -> None:
    # When status --json runs before any job ran
    document = cli("status", "--json").json()

    # Then it is the design's document, every service healthy and CLOSED, nothing deferred
    assert document == {
        "status": "healthy",
        "services": {
            "slskd": closed_service("slskd-api"),
            "spotify": closed_service("spotify-api"),
            "musicbrainz": closed_service("musicbrainz-api"),
        },
    }


def test_status_shows_a_breaker_opened_by_failures_with_its_counts_and_deferred_jobs(
    cli: Cli, redis_client: redis.Redis
) -> None:
    # Given a worker's slskd breaker that saw 1 success, 2 failures (it opened) and 1 refusal
    backend = RedisBackend(redis_client, prefix=BREAKER_PREFIX, local_view=False)
    config = CircuitBreakerConfig(failure_threshold=2, timeout=60.0)
    breaker = CircuitBreaker("slskd-api", config, backend=backend)
    breaker.call_sync(lambda: None)
    for _ in range(2):
        with pytest.raises(Down):
            breaker.call_sync(fail)
    with pytest.raises(Exception, match="is OPEN"):
        breaker.call_sync(lambda: None)
    # And two of its messages in the deferred index
    index = RedisDeferredIndex(redis_client, Keys())
    for message_id in ("m1", "m2"):
        index.add(DeferredJob(message_id, "search_track", "default", "slskd-api", 0, 1, 0, "x"))
    index.close()

    # When status runs, as JSON and as text
    env = {"CIRCUIT_BREAKER_FAILURE_THRESHOLD": "2"}
    document = cli("status", "--json", **env).json()
    text = cli("status", **env)

    # Then the document shows slskd unhealthy and OPEN with its whole retry_after and deferrals
    slskd = document["services"]["slskd"]
    assert document["status"] == "degraded"
    assert slskd["status"] == "unhealthy"
    assert slskd["circuit_breaker"] == "open"
    assert 58 <= slskd["retry_after"] <= 60 and isinstance(slskd["retry_after"], int)
    assert (slskd["name"], slskd["deferred"]) == ("slskd-api", 2)
    assert "retry_after" not in document["services"]["spotify"]
    # And the text lists its state, failure count, totals and deferred count
    line = next(row for row in text.stdout.splitlines() if row.startswith("slskd "))
    assert line.split()[:4] == ["slskd", "slskd-api", "open", "2"]
    assert line.split()[5:] == ["4", "1", "2", "1", "2"]
    assert text.stdout.rstrip().endswith("overall: degraded")
    backend.close()


@pytest.mark.parametrize(
    ("outage", "reason"),
    [
        (
            ServiceOutage(
                "slskd-api",
                "POST /api/v0/searches answered 409: The server connection must be connected"
                " and logged in to perform a search (currently: Connected)",
                outage="not logged in to Soulseek",
                status=409,
                opens_at_once=True,
            ),
            "not logged in to Soulseek",
        ),
        (
            UnauthorizedError(
                "slskd-api",
                "GET /api/v0/session answered 401 Unauthorized",
                variable="SLSKD_API_KEY",
            ),
            "unauthorized (check SLSKD_API_KEY)",
        ),
    ],
    ids=["logged-out", "unauthorized"],
)
def test_status_health_and_metrics_say_why_a_breaker_is_open(
    cli: Cli, redis_client: redis.Redis, redis_url: str, outage: ServiceOutage, reason: str
) -> None:
    # Given a worker's slskd breaker that met an outage of slskd (it opens at once)
    backend = RedisBackend(redis_client, prefix=BREAKER_PREFIX, local_view=False)
    breaker = CircuitBreaker("slskd-api", CircuitBreakerConfig(), backend=backend)

    def call() -> None:
        raise outage

    with pytest.raises(ServiceOutage):
        breaker.call_sync(call)

    # When status runs, as text and as JSON, and the metrics are read
    text = cli("status").stdout
    document = cli("status", "--json").json()
    app = SoulspotJobs(load_settings(REDIS_URL=redis_url))
    metrics = generate_latest(registry_for(app)).decode()
    app.close()

    # Then each says why slskd's breaker is OPEN
    assert f"slskd: {reason}" in text.splitlines()
    assert document["services"]["slskd"]["circuit_breaker"] == "open"
    assert document["services"]["slskd"]["reason"] == reason
    assert "reason" not in document["services"]["spotify"]
    assert (
        f'soulspot_circuit_breaker_reason{{reason="{reason}",service="slskd-api"}} 1.0' in metrics
    )
    backend.close()


def test_a_breaker_forced_open_says_so_until_it_is_reset(cli: Cli) -> None:
    cli("open", "slskd", "--for", "600")
    assert "slskd: forced open by an operator" in cli("status").stdout.splitlines()
    cli("reset", "slskd")
    status = cli("status")
    assert "slskd:" not in status.stdout
    assert "reason" not in cli("status", "--json").json()["services"]["slskd"]


def test_open_forces_the_breaker_open_for_every_worker_and_status_shows_until_when(
    cli: Cli, redis_client: redis.Redis
) -> None:
    # Given a worker whose local view of the slskd breaker is live and CLOSED
    worker = RedisBackend(redis_client, prefix=BREAKER_PREFIX, refresh_interval=60.0)
    config = CircuitBreakerConfig()
    with pytest.raises(Down):
        CircuitBreaker("slskd-api", config, backend=worker).call_sync(fail)
    assert worker._watcher is not None and worker._watcher.live.wait(5.0)

    # When the operator opens slskd for 600 s
    before = time.time()
    result = cli("open", "slskd", "--for", "600", "--json")

    # Then the command reports it OPEN until then
    opened = result.json()
    assert opened["service"] == "slskd-api" and opened["state"] == "open"
    assert before + 599 <= opened["forced_until"] <= time.time() + 601
    # And the worker's local view refuses slskd calls without asking Redis
    wait_until(lambda: worker._views["slskd-api"].state is CircuitState.OPEN, "view OPEN")
    decision = worker.admit_locally("slskd-api", config)
    assert decision is not None and not decision.admitted
    # And status shows it forced open, until when, and the health document says OPEN
    text = cli("status").stdout
    assert "open (forced until 20" in text
    assert cli("status", "--json").json()["services"]["slskd"]["circuit_breaker"] == "open"
    # And the change was logged
    assert "circuit_breaker.forced_open" in result.stderr

    # When the operator resets it
    reset = cli("reset", "slskd", "--json")

    # Then it is CLOSED everywhere, the worker's view included, and the reset was logged
    assert reset.json() == {"service": "slskd-api", "state": "closed"}
    assert "circuit_breaker.reset" in reset.stderr
    wait_until(lambda: worker._views["slskd-api"].state is CircuitState.CLOSED, "view CLOSED")
    assert cli("status", "--json").json()["status"] == "healthy"
    worker.close()


def test_open_without_for_holds_the_breaker_open_for_an_hour(cli: Cli) -> None:
    # When musicbrainz is opened with no --for
    cli("open", "musicbrainz-api")

    # Then it stays OPEN for an hour
    retry_after = cli("status", "--json").json()["services"]["musicbrainz"]["retry_after"]
    assert 3590 <= retry_after <= 3600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("open", "lastfm"), "error: unknown service 'lastfm'"),
        (("reset", "slskd-ap"), "error: unknown service 'slskd-ap'"),
        (("open", "slskd", "--for", "0"), f"{BAD_PERIOD}, got 0.0"),
        (("open", "slskd", "--for", "-5"), f"{BAD_PERIOD}, got -5.0"),
        (("open", "slskd", "--for", "inf"), f"{BAD_PERIOD}, got inf"),
        (("open", "slskd", "--for", "nan"), f"{BAD_PERIOD}, got nan"),
        (("open", "slskd", "--for", "1e12"), f"{BAD_PERIOD}, got 1000000000000.0"),
        (("open", "slskd", "--for", "604801"), f"{BAD_PERIOD}, got 604801.0"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    cli: Cli, args: tuple[str, ...], message: str
) -> None:
    # When a switch is given a bad argument
    result = cli(*args)

    # Then one error line, exit 2, and no breaker changed
    assert result.exit_code == 2
    assert result.stderr.startswith(message)
    assert len(result.stderr.splitlines()) == 1
    assert cli("status", "--json").json()["status"] == "healthy"


def test_open_accepts_exactly_7_days_and_status_shows_until_when(cli: Cli) -> None:
    # When slskd is forced OPEN for the longest period allowed
    result = cli("open", "slskd", "--for", "604800")

    # Then it is, and status shows the date it ends and a retry_after of 7 days
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Circuit breaker slskd-api is OPEN until 20")
    assert 604790 <= cli("status", "--json").json()["services"]["slskd"]["retry_after"] <= 604800


def test_health_flags_a_breaker_forced_open_by_an_operator_until_it_is_reset(
    cli: Cli, redis_client: redis.Redis
) -> None:
    # Given musicbrainz OPEN after failures, and slskd forced OPEN by the operator
    backend = RedisBackend(redis_client, prefix=BREAKER_PREFIX, local_view=False)
    breaker = CircuitBreaker(
        "musicbrainz-api", CircuitBreakerConfig(failure_threshold=1), backend=backend
    )
    with pytest.raises(Down):
        breaker.call_sync(fail)
    cli("open", "slskd", "--for", "600")

    # When the health document is read
    services = cli("status", "--json").json()["services"]

    # Then only the forced breaker says "forced": true
    assert services["slskd"]["forced"] is True
    assert services["musicbrainz"]["circuit_breaker"] == "open"
    assert "forced" not in services["musicbrainz"]
    assert "forced" not in services["spotify"]

    # And once reset, it no longer does
    cli("reset", "slskd")
    assert "forced" not in cli("status", "--json").json()["services"]["slskd"]
    backend.close()


def test_any_stored_breaker_state_renders_in_status_health_and_metrics(
    cli: Cli, redis_client: redis.Redis, redis_url: str
) -> None:
    # Given breaker hashes no current command writes: slskd forced OPEN until inf (as an older
    # version's `open --for inf` left it), spotify until 1e15, musicbrainz hand-edited garbage
    redis_client.hset(
        f"{BREAKER_PREFIX}:slskd-api",
        mapping={
            "state": "open",
            "open_until": "inf",
            "forced_until": "inf",
            "reason": "forced open by an operator",
        },
    )
    redis_client.hset(
        f"{BREAKER_PREFIX}:spotify-api",
        mapping={"state": "open", "open_until": "1e15", "forced_until": "1e15"},
    )
    redis_client.hset(
        f"{BREAKER_PREFIX}:musicbrainz-api",
        mapping={"state": "banana", "failure_count": "many", "total_requests": "x"},
    )

    # When status runs, as text and as JSON, and the metrics are read
    text = cli("status")
    document = cli("status", "--json").json()
    app = SoulspotJobs(load_settings(REDIS_URL=redis_url))
    metrics = generate_latest(registry_for(app)).decode()
    app.close()

    # Then the text shows both OPEN without end, forced indefinitely, retry_after 7 days at most
    assert text.exit_code == 0, text.stderr
    rows = {line.split()[0]: line for line in text.stdout.splitlines()[1:4]}
    assert "open (forced indefinitely)" in rows["slskd"]
    assert "open (forced indefinitely)" in rows["spotify"]
    assert "604800.0s" in rows["slskd"]
    assert rows["musicbrainz"].split()[2:4] == ["closed", "0"]
    assert "slskd: forced open by an operator" in text.stdout.splitlines()
    # And the health document is valid JSON with whole, bounded retry_after, flagged forced
    for key in ("slskd", "spotify"):
        entry = document["services"][key]
        assert (entry["circuit_breaker"], entry["retry_after"], entry["forced"]) == (
            "open",
            604800,
            True,
        )
    assert document["services"]["musicbrainz"]["circuit_breaker"] == "closed"
    # And the metrics hold no infinity
    assert "Inf" not in metrics and "NaN" not in metrics
    assert 'soulspot_circuit_breaker_retry_after_seconds{service="slskd-api"} 604800.0' in metrics
    assert 'soulspot_circuit_breaker_forced_open{service="spotify-api"} 1.0' in metrics


def test_status_counts_the_slskd_peers_skipped_now(cli: Cli, redis_client: redis.Redis) -> None:
    # Given three slskd peers a worker remembers (they failed), two of them ejected
    peers = PeerBreakers(client=redis_client, prefix=Keys().peer_breakers)
    for name in ("gone_peer", "refusing peer"):
        for _ in range(peers.config.failure_threshold):
            peers.failed(Pick(name), "offline")
    peers.failed(Pick("flaky_peer"), "timed out")
    peers.close()

    # When status runs
    text = cli("status").stdout

    # Then it says how many peers are skipped now, before the overall verdict
    lines = text.rstrip().splitlines()
    assert lines[-2:] == ["slskd peers: 2 skipped now, of 3 remembered", "overall: healthy"]
