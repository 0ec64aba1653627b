"""Where held messages go: deferred until their service admits them, or dead-lettered.

* :mod:`.options`: the message options a deferred message carries (its history).
* :mod:`.deferrals`: :class:`Deferrals` replaces a held message by a delayed copy, within its
  deferral budget.
* :mod:`.index`: :class:`DeferredIndex`, which messages wait for a breaker, why, and until when.
* :mod:`.reasons`: :class:`DeadLetterReasons`, why the project dead-lettered a message.
* :mod:`.dead_letters`: :class:`DeadLetters`, the Redis broker's dead letters, listed and
  requeued.

Nothing here decides *whether* a message is deferred: the project's Retries middleware does
(:mod:`soulspot_jobs.middleware.retries`).
"""

from soulspot_jobs.deferral.deferrals import Deferrals, Refusal
from soulspot_jobs.deferral.index import (
    DeferredIndex,
    DeferredJob,
    MemoryDeferredIndex,
    RedisDeferredIndex,
)
from soulspot_jobs.deferral.options import DEFERRALS, DEFERRED_BY, FIRST_DEFERRED_AT
from soulspot_jobs.deferral.reasons import DeadLetterReasons

__all__ = [
    "DEFERRALS",
    "DEFERRED_BY",
    "FIRST_DEFERRED_AT",
    "DeadLetterReasons",
    "DeferredIndex",
    "DeferredJob",
    "Deferrals",
    "MemoryDeferredIndex",
    "RedisDeferredIndex",
    "Refusal",
]
