"""Prometheus metrics read from Redis at scrape time, so they cover every worker process.

:class:`SoulspotCollector` is a custom prometheus-client collector: each scrape reads the breaker
hashes, the deferred index (its entries and its deferral counter), the job records and the
dead-letter queues (``soulspot_dead_letters`` has a sample for each queue the jobs use, 0 when
it is empty; none on RabbitMQ, which keeps the dead letters). Nothing is kept in the serving
process's memory, so the numbers are the cluster's, whichever process serves them, and no gauge
can drift below zero. Any breaker hash renders (see :mod:`.health`): ``retry_after`` is at most
7 days.

This replaces Dramatiq's own Prometheus middleware for our jobs. That middleware counts every
deferral as a processed, failed message, and its ``dramatiq_delayed_messages_inprogress`` gauge
goes negative: it increments the gauge under the delay queue's name (``default.DQ``) when a
delayed message is fetched, and decrements it under the real queue's name (``default``) when the
message runs, and every deferral is a delayed message. :func:`~soulspot_jobs.broker.build_broker`
installs it only when asked to, fixed (:mod:`soulspot_jobs.middleware.prometheus`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.circuit_breaker.state import BreakerMode
from soulspot_jobs.deferral.dead_letters import DeadLetters
from soulspot_jobs.operate.health import SERVICES, read_stats

if TYPE_CHECKING:
    from soulspot_jobs.jobs.app import SoulspotJobs

#: Prefix of every metric name.
NAMESPACE = "soulspot"


class SoulspotCollector(Collector):
    """Collects the breakers', deferrals', jobs' and dead letters' numbers from Redis."""

    def __init__(self, app: SoulspotJobs) -> None:
        self.app = app
        # a RabbitMQ broker keeps its dead letters in RabbitMQ: no gauge from here then
        redis_broker = isinstance(app.broker, RedisBroker)
        self.dead_letters = DeadLetters(app.broker) if redis_broker else None

    def collect(self) -> Iterator[Metric]:
        yield from self._breakers()
        yield from self._deferrals()
        jobs = GaugeMetricFamily(
            f"{NAMESPACE}_jobs", "Job records in each state now.", labels=["state"]
        )
        for state, count in sorted(self.app.store.count_by_state().items()):
            jobs.add_metric([state], count)
        yield jobs
        if self.dead_letters is not None:
            yield self._dead_letters(self.dead_letters)

    def _dead_letters(self, dead_letters: DeadLetters) -> Metric:
        """Per queue: every queue the jobs use (0 when it has none, so an alert on the gauge
        has a sample to compare), and any other queue that has some."""
        dead = GaugeMetricFamily(
            f"{NAMESPACE}_dead_letters",
            "Dead-lettered messages kept by the broker, per queue.",
            labels=["queue"],
        )
        counts = dead_letters.counts()
        declared = {q for q in self.app.broker.get_declared_queues() if q == q_name(q)}
        for queue in sorted(declared | set(counts)):
            dead.add_metric([queue], counts.get(queue, 0))
        return dead

    def _breakers(self) -> Iterator[Metric]:
        name = f"{NAMESPACE}_circuit_breaker"
        state = GaugeMetricFamily(
            f"{name}_state",
            "1 for the breaker's current state, 0 for the others.",
            labels=["service", "state"],
        )
        retry_after = GaugeMetricFamily(
            f"{name}_retry_after_seconds",
            "Seconds until an OPEN breaker admits trial calls (0 unless OPEN).",
            labels=["service"],
        )
        forced = GaugeMetricFamily(
            f"{name}_forced_open", "1 while an operator holds the breaker OPEN.", labels=["service"]
        )
        failures = GaugeMetricFamily(
            f"{name}_failure_count",
            "Consecutive failures counted towards opening.",
            labels=["service"],
        )
        transitions = CounterMetricFamily(
            f"{name}_transitions",
            "State changes, by the state entered (OPEN -> HALF_OPEN counted when taken).",
            labels=["service", "to_state"],
        )
        requests = CounterMetricFamily(
            f"{name}_requests", "Calls that asked the breaker.", labels=["service"]
        )
        calls = CounterMetricFamily(
            f"{name}_calls", "Calls that ran, by outcome.", labels=["service", "outcome"]
        )
        rejections = CounterMetricFamily(
            f"{name}_rejections", "Calls refused (and deferred) by the breaker.", labels=["service"]
        )
        modes = GaugeMetricFamily(
            f"{name}_mode",
            "1 for the operator's mode of the breaker (normal, disabled, metrics_only, "
            "forced_open), 0 for the others.",
            labels=["service", "mode"],
        )
        would_open = CounterMetricFamily(
            f"{name}_would_open",
            "Openings metrics_only mode counted instead of making.",
            labels=["service"],
        )
        window = GaugeMetricFamily(
            f"{name}_window_calls",
            "Calls in the failure-rate window now, by outcome (all, failure, slow); 0 without "
            "a window.",
            labels=["service", "outcome"],
        )
        reasons = GaugeMetricFamily(
            f"{name}_reason",
            "1 for why a breaker that is not CLOSED opened (an outage's reason, unauthorized, "
            "forced open by an operator, or the last failure's words).",
            labels=["service", "reason"],
        )
        for service, stats in read_stats(self.app.breakers).items():
            if stats.reason:
                reasons.add_metric([service, stats.reason], 1.0)
            for candidate in CircuitState:
                state.add_metric([service, candidate.value], float(stats.state is candidate))
            retry_after.add_metric([service], stats.retry_after or 0.0)
            forced.add_metric([service], float(stats.forced_until is not None))
            failures.add_metric([service], stats.failure_count)
            for candidate in CircuitState:
                count = stats.transitions.get(candidate.value, 0)
                transitions.add_metric([service, candidate.value], count)
            requests.add_metric([service], stats.total_requests)
            calls.add_metric([service, "success"], stats.total_successes)
            calls.add_metric([service, "failure"], stats.total_failures)
            rejections.add_metric([service], stats.total_rejections)
            for candidate in BreakerMode:
                modes.add_metric([service, candidate.value], float(stats.mode == candidate))
            would_open.add_metric([service], stats.would_opens)
            window.add_metric([service, "all"], stats.window_calls)
            window.add_metric([service, "failure"], stats.window_failures)
            window.add_metric([service, "slow"], stats.window_slow_calls)
        yield from (state, retry_after, forced, failures, transitions, requests, calls, rejections)
        yield from (modes, would_open, window, reasons)

    def _deferrals(self) -> Iterator[Metric]:
        index = self.app.deferred
        totals = index.deferral_totals()
        now = index.counts()
        deferrals = CounterMetricFamily(
            f"{NAMESPACE}_deferrals",
            "Messages deferred by a breaker (re-enqueued for later, not run, not failed).",
            labels=["service"],
        )
        deferred = GaugeMetricFamily(
            f"{NAMESPACE}_deferred_jobs",
            "Messages deferred now, waiting for their breaker.",
            labels=["service"],
        )
        for service in sorted({*SERVICES.values(), *totals, *now}):
            deferrals.add_metric([service], totals.get(service, 0))
            deferred.add_metric([service], now.get(service, 0))
        yield deferrals
        yield deferred


def registry_for(app: SoulspotJobs) -> CollectorRegistry:
    """A registry holding only :class:`SoulspotCollector` (no process metrics of the server)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SoulspotCollector(app))
    return registry
