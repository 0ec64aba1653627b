"""Loaded by the demo's worker processes after the production worker module:
``dramatiq soulspot_jobs.worker soulspot_jobs.demo.instrument``.

The workers run exactly what ``dramatiq soulspot_jobs.worker`` runs, plus :class:`RunTally`, so
the demo can report the retries and deferrals the messages really went through.
"""

from soulspot_jobs.demo.tally import RunTally
from soulspot_jobs.worker import broker

broker.add_middleware(RunTally(broker.client, broker.keys))
