"""Dramatiq's Prometheus middleware with its two miscounts of deferred messages fixed.

``build_broker(prometheus=True)`` installs :class:`DramatiqPrometheus` for those who scrape
Dramatiq's own ``dramatiq_*`` metrics (its exposition server, port 9191, under the ``dramatiq``
worker command). Our own numbers (breakers, deferrals, jobs) are served by ``soulspot-jobs
serve`` on ``/metrics`` (:mod:`soulspot_jobs.operate.metrics`), read from Redis for every
worker.

What Dramatiq 2.2's middleware gets wrong about delayed and deferred messages:

* ``dramatiq_delayed_messages_inprogress`` is incremented under the delay queue's name
  (``jobs.DQ``) when a worker fetches a delayed message, and decremented under the real queue's
  name (``jobs``) when the message later runs, so the ``jobs`` series goes below zero by one per
  delayed message (and the ``jobs.DQ`` series only grows). Here both use the real queue's name,
  and the gauge goes down when the delayed message leaves this process's delay queue (it is
  acknowledged once moved to its queue), which is the process that counted it up.
* A deferred delivery (the message was held back and re-enqueued for later) is counted in
  ``dramatiq_messages_total``, ``dramatiq_message_errors_total`` and the duration histogram as
  if it had been processed and had failed. Here a deferral only ends the message's in-progress
  count; deferrals are counted as deferrals by ``soulspot_deferrals_total``.
"""

from __future__ import annotations

from typing import Any

from dramatiq.common import current_millis, q_name
from dramatiq.middleware.prometheus import Prometheus

from soulspot_jobs.errors import HoldBack

#: Suffix of Dramatiq's delay queues.
DELAY_QUEUE_SUFFIX = ".DQ"


class DramatiqPrometheus(Prometheus):
    """:class:`~dramatiq.middleware.prometheus.Prometheus` without negative gauges, and without
    counting skipped (deferred) messages as processed."""

    def before_delay_message(self, broker: Any, message: Any) -> None:
        labels = (q_name(message.queue_name), message.actor_name)
        self.delayed_messages.add(_delivery(message))
        self.inprogress_delayed_messages.labels(*labels).inc()

    def after_ack(self, broker: Any, message: Any) -> None:
        self._leave_delay_queue(message)

    def after_nack(self, broker: Any, message: Any) -> None:
        if not self._leave_delay_queue(message):
            super().after_nack(broker, message)

    def before_process_message(self, broker: Any, message: Any) -> None:
        labels = (message.queue_name, message.actor_name)
        self.inprogress_messages.labels(*labels).inc()
        self.message_start_times[message.message_id] = current_millis()

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        if isinstance(exception, HoldBack) and not message.failed:
            self.after_skip_message(broker, message)
            return
        super().after_process_message(broker, message, result=result, exception=exception)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        """A skipped (or deferred) message ends its in-progress count, and counts nothing."""
        labels = (message.queue_name, message.actor_name)
        self.message_start_times.pop(message.message_id, None)
        self.inprogress_messages.labels(*labels).dec()

    def _leave_delay_queue(self, message: Any) -> bool:
        """Count a delayed message out of this process's delay queue; False if it was not one."""
        if not message.queue_name.endswith(DELAY_QUEUE_SUFFIX):
            return False
        delivery = _delivery(message)
        if delivery in self.delayed_messages:
            self.delayed_messages.remove(delivery)
            labels = (q_name(message.queue_name), message.actor_name)
            self.inprogress_delayed_messages.labels(*labels).dec()
        return True


def _delivery(message: Any) -> str:
    """One delivery of a message: deferrals re-enqueue the same message id, each time anew."""
    return str(message.options.get("redis_message_id") or message.message_id)
