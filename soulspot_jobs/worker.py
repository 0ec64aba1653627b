"""The module Dramatiq's worker command loads: ``dramatiq soulspot_jobs.worker``.

Importing it reads the settings from the environment (``REDIS_URL`` must be set: every worker
process must share one Redis), configures logging and declares the actors on the broker. This
module exists for the worker command; programs should build :class:`SoulspotJobs` themselves.
"""

import dramatiq

from soulspot_jobs.app import SoulspotJobs
from soulspot_jobs.logging import configure_logging
from soulspot_jobs.settings import load_settings

settings = load_settings()
configure_logging(settings)
jobs = SoulspotJobs(settings)
broker = jobs.broker
dramatiq.set_broker(broker)
