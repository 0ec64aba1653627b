"""The message options a deferred message carries: how often, since when, and by which service.

Only a deferred copy carries them (the copy is a new message; the delivery it replaces is
acknowledged as it was). A dead letter requeued with ``soulspot-jobs dead-letters requeue`` comes
back without any of them, so its deferral budget starts afresh.
"""

#: Times the message has been deferred so far.
DEFERRALS = "circuit_breaker_deferrals"
#: Epoch milliseconds of its first deferral (the deferral budget counts from there).
FIRST_DEFERRED_AT = "circuit_breaker_first_deferred_at"
#: The service whose breaker (or limit) deferred it last; its deferred-index entry is there.
DEFERRED_BY = "circuit_breaker_service"
#: Set on a delayed copy that waits only for its service to be back (a breaker refused it, an
#: outage met it, or its failure left the breaker OPEN): the epoch milliseconds of that
#: deferral or retry, from which it may run as soon as that service's breaker closes. ``None``
#: on any other delayed copy: back-pressure (the service or a rate limit asked for the time)
#: and plain retries wait for their eta. See :mod:`soulspot_jobs.middleware.release`.
RELEASE_FROM = "circuit_breaker_release_from"
#: The prefix every option above shares.
OPTION_PREFIX = "circuit_breaker_"
