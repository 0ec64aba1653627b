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
#: The prefix every option above shares.
OPTION_PREFIX = "circuit_breaker_"
