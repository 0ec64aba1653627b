"""Dramatiq's Prometheus middleware as ``build_broker(prometheus=True)`` installs it, on a real
Worker: a deferral is not a processed message, and no gauge goes negative."""

from __future__ import annotations

import threading
from pathlib import Path

import dramatiq
import pytest

from soulspot_jobs.broker import build_broker
from soulspot_jobs.settings import load_settings

#: Seconds the breaker is held OPEN: the message is deferred once, then runs.
HOLD_OPEN = 0.2
#: Seconds any wait may take before the test fails.
DEADLINE = 20.0


def series(metric: object) -> dict[tuple[str, ...], float]:
    """A prometheus-client metric's samples by label values (``_created`` samples left out)."""
    return {
        tuple(sample.labels.values()): sample.value
        for family in metric.collect()  # type: ignore[attr-defined]
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_a_deferred_message_counts_once_as_processed_and_no_gauge_goes_negative(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker with Prometheus enabled, booted as the dramatiq command boots a process
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        monkeypatch.setenv(name, str(tmp_path))
    broker = build_broker(load_settings(REDIS_URL=redis_url), prometheus=True)
    ran = threading.Event()

    @dramatiq.actor(broker=broker, service="slskd-api", queue_name="jobs")
    def fetch() -> None:
        ran.set()

    broker.emit_after("process_boot")
    prometheus = broker.middleware[0]
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        # When the slskd breaker is OPEN as the message arrives: it is deferred once, then runs
        broker.breakers["slskd-api"].force_open_sync(HOLD_OPEN)
        fetch.send()
        assert ran.wait(DEADLINE)
        broker.join("jobs", timeout=int(DEADLINE * 1000))  # acked: every hook of it has run
        labels = ("jobs", "fetch")

        # Then the message counts once as processed, not once more (as an error) for its
        # deferral
        assert series(prometheus.total_messages) == {labels: 1}
        assert series(prometheus.total_errored_messages) in ({}, {labels: 0})
        assert broker.deferred.deferral_totals() == {"slskd-api": 1}
        # And the delayed-messages gauge went up and down under the queue's own name, to 0
        assert series(prometheus.inprogress_messages) == {labels: 0}
        assert series(prometheus.inprogress_delayed_messages) == {labels: 0}
        # And no gauge is negative
        for gauge in (prometheus.inprogress_delayed_messages, prometheus.inprogress_messages):
            assert all(value >= 0 for value in series(gauge).values())
    finally:
        worker.stop()
        broker.close()
