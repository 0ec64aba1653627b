"""Crash and restart recovery on the Redis broker: nothing a dead worker or a Redis restart
leaves behind stays stranded (see the README's *Crash recovery*).

* :class:`RecoveringRedisBroker` (``held``): knows which fetched messages its process holds.
* :class:`Recovery` (``watchdog``): heartbeats, requeues dead processes' and its own lost messages.
* :class:`OrphanCheck` (``orphans``): requeues, then fails, jobs whose messages vanished.
"""

from soulspot_jobs.recovery.held import RecoveringRedisBroker
from soulspot_jobs.recovery.orphans import OrphanCheck, next_step
from soulspot_jobs.recovery.watchdog import Recovery

__all__ = ["OrphanCheck", "RecoveringRedisBroker", "Recovery", "next_step"]
