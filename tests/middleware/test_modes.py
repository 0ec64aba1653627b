"""An operator's mode as a real Worker meets it: ``metrics_only`` never defers a job (the failure
that would have opened the breaker is an ordinary retry), ``disabled`` counts nothing."""

from __future__ import annotations

import dramatiq

from soulspot_jobs.deferral.options import DEFERRED_BY
from soulspot_jobs.errors import ServiceUnavailableError, is_service_failure
from tests.middleware.conftest import QUEUE, Harness, LogWatch, Runs, config


def _failing_once(harness: Harness, mode: str):
    slskd = harness.breaker("slskd-api", config(failure_threshold=1), is_failure=is_service_failure)
    slskd.set_mode_sync(mode)
    broker = harness.broker(slskd)
    runs = Runs(1)
    failures_left = [1]

    @dramatiq.actor(
        broker=broker, queue_name=QUEUE, service="slskd-api", max_retries=1, min_backoff=10
    )
    def search() -> None:
        if failures_left[0]:
            failures_left[0] -= 1
            raise ServiceUnavailableError("slskd-api", "connection refused")
        runs.record()

    return slskd, broker, runs, search


def test_metrics_only_logs_the_opening_and_retries_the_job_instead_of_deferring_it(
    harness: Harness, logs: LogWatch
) -> None:
    # Given a breaker that would open at the first failure, watched in metrics_only mode
    slskd, broker, runs, search = _failing_once(harness, "metrics_only")

    # When the job's service fails once
    message = search.send()
    harness.start_worker(broker)
    runs.wait()

    # Then the would-be opening is logged and counted, and the job was retried, not deferred
    assert logs.named("circuit_breaker.would_open")
    assert logs.named("circuit_breaker.opened") == []
    assert logs.named("job.deferred") == []
    assert runs.options[message.message_id]["retries"] == 1
    assert DEFERRED_BY not in runs.options[message.message_id]
    stats = slskd.stats
    assert (stats.state.value, stats.would_opens, stats.total_failures) == ("closed", 1, 1)


def test_a_disabled_breaker_counts_no_failure_and_defers_nothing(
    harness: Harness, logs: LogWatch
) -> None:
    slskd, broker, runs, search = _failing_once(harness, "disabled")
    message = search.send()
    harness.start_worker(broker)
    runs.wait()
    assert logs.named("job.deferred") == []
    assert runs.options[message.message_id]["retries"] == 1
    stats = slskd.stats
    assert (stats.state.value, stats.total_failures, stats.total_requests) == ("closed", 0, 0)
