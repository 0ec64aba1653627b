"""The Dramatiq brokers of soulspot-jobs and the one function that builds them.

* :func:`build_broker` (``build``): a Redis or RabbitMQ broker with the project's middleware
  stack in its place.
* :class:`RecoveringRedisBroker` (``redis``): a RedisBroker that knows which fetched messages
  its process holds, so that nothing a restart or a crash strands stays stranded.
"""

from soulspot_jobs.broker.build import AMQP_SCHEMES, build_broker

__all__ = ["AMQP_SCHEMES", "build_broker"]
