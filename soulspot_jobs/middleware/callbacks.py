"""``DeferralAwareCallbacks``: Dramatiq's Callbacks, for which a deferral is not an outcome.

Dramatiq's :class:`~dramatiq.middleware.Callbacks` sends ``on_failure`` after every failed
attempt and ``on_success`` after the success. A message the project defers (refused by its
breaker, or held back from inside by a :class:`~soulspot_jobs.errors.HoldBack`) has neither
succeeded nor failed: it runs again later, and its callbacks fire then. So a deferred message
fires ``on_success`` once when it succeeds, and ``on_failure`` once per failed attempt, as any
message does; a hold fires ``on_failure`` only when it ends the message (its deferral budget
spent: it is dead-lettered).
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import Callbacks

from soulspot_jobs.errors import HoldBack

__all__ = ["DeferralAwareCallbacks"]


class DeferralAwareCallbacks(Callbacks):
    """:class:`~dramatiq.middleware.Callbacks` that sends nothing for a deferred delivery."""

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        if isinstance(exception, HoldBack) and not message.failed:
            return
        super().after_process_message(broker, message, result=result, exception=exception)
