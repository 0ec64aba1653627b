"""``soulspot-jobs mode SERVICE MODE``: an operator's mode for every worker, shown by ``status``,
``/health`` and ``/metrics``."""

from __future__ import annotations

import pytest
import redis
from prometheus_client import generate_latest

from soulspot_jobs.circuit_breaker import CircuitBreaker, CircuitBreakerConfig, RedisBackend
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.operate.metrics import registry_for
from soulspot_jobs.settings import load_settings
from tests.polling import wait_until

from .conftest import Cli

BREAKER_PREFIX = "soulspot:breaker"


class Down(Exception):
    """The service failed."""


def fail() -> None:
    raise Down


def test_metrics_only_is_followed_by_a_worker_and_status_shows_what_it_would_have_done(
    cli: Cli, redis_client: redis.Redis, redis_url: str
) -> None:
    # Given a worker whose local view of the slskd breaker is live
    worker = RedisBackend(redis_client, prefix=BREAKER_PREFIX, refresh_interval=60.0)
    breaker = CircuitBreaker("slskd-api", CircuitBreakerConfig(failure_threshold=2), backend=worker)
    breaker.call_sync(lambda: None)
    assert worker._watcher is not None and worker._watcher.live.wait(5.0)

    # When the operator switches slskd to metrics_only
    result = cli("mode", "slskd", "metrics_only", "--json")

    # Then the command says so and logs it, and the worker follows (by pub/sub)
    assert result.json() == {"service": "slskd-api", "mode": "metrics_only", "state": "closed"}
    assert "circuit_breaker.mode" in result.stderr
    wait_until(lambda: worker._views["slskd-api"].mode == "metrics_only", "view metrics_only")
    # And failures past the threshold never refuse a call, and are reported as would-be openings
    for _ in range(4):
        with pytest.raises(Down):
            breaker.call_sync(fail)
    breaker.call_sync(lambda: None)
    assert "slskd: mode metrics_only (would have opened 2 times)" in cli("status").stdout
    document = cli("status", "--json").json()["services"]["slskd"]
    assert (document["mode"], document["would_opens"], document["status"]) == (
        "metrics_only",
        2,
        "healthy",
    )
    app = SoulspotJobs(load_settings(REDIS_URL=redis_url))
    metrics = generate_latest(registry_for(app)).decode()
    app.close()
    assert 'soulspot_circuit_breaker_mode{mode="metrics_only",service="slskd-api"} 1.0' in metrics
    assert 'soulspot_circuit_breaker_would_open_total{service="slskd-api"} 2.0' in metrics

    # When the operator disables it, then sets it back to normal
    cli("mode", "slskd", "disabled")
    wait_until(lambda: breaker.acquire_sync().disabled, "worker sees disabled")
    assert cli("status", "--json").json()["services"]["slskd"]["mode"] == "disabled"
    cli("mode", "slskd", "normal")
    wait_until(lambda: not breaker.acquire_sync().disabled, "worker sees normal")
    assert "mode" not in cli("status", "--json").json()["services"]["slskd"]
    worker.close()


def test_forced_open_mode_holds_the_breaker_open_for_its_period(cli: Cli) -> None:
    result = cli("mode", "spotify", "forced_open", "--for", "120", "--json")
    assert result.json() == {"service": "spotify-api", "mode": "forced_open", "state": "open"}
    assert 110 <= cli("status", "--json").json()["services"]["spotify"]["retry_after"] <= 120
    cli("mode", "spotify", "normal")
    assert cli("status", "--json").json()["status"] == "healthy"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("mode", "slskd", "off"), "error: unknown breaker mode 'off'"),
        (("mode", "lastfm", "disabled"), "error: unknown service 'lastfm'"),
        (("mode", "slskd", "forced_open", "--for", "0"), "error: --for: a forced-open period"),
    ],
)
def test_a_bad_mode_is_one_line_exit_2_and_changes_nothing(
    cli: Cli, args: tuple[str, ...], message: str
) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1
    assert "mode" not in cli("status", "--json").json()["services"]["slskd"]
