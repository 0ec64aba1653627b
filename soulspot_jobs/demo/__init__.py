"""``soulspot-jobs demo``: the whole product on one machine, against the fake upstreams.

* :mod:`.scenario`: the run (Redis, fakes, two worker processes, an slskd outage midway).
* :mod:`.processes`: the worker processes, in a process group of their own.
* :mod:`.instrument`, :mod:`.tally`: what the workers record of each message's retries and
  deferrals, for the summary.
* :mod:`.view`: the live view and the summary.

The fake upstream servers themselves are in :mod:`soulspot_jobs.fakes`.
"""
