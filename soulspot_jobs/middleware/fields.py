"""``message_fields``: a message's fields, read without the cost of Dramatiq's proxy.

A worker hands middleware a :class:`dramatiq.broker.MessageProxy`, whose fields (``options``,
``actor_name``...) are reached through ``__getattr__``: Python first fails the normal look-up,
building an ``AttributeError``, before calling it. That costs about 0.6 to 0.9 µs per field read
on this project's machines, several times the rest of a healthy message's hooks. The proxy keeps
the :class:`dramatiq.Message` it wraps as ``_message`` (Dramatiq 2.x); the hot paths read the
fields there. Anything else (a plain message) is returned as it is.
"""

from __future__ import annotations

from typing import Any

import dramatiq


def message_fields(message: Any) -> dramatiq.Message:
    """The :class:`dramatiq.Message` behind ``message`` (a worker's proxy, or the message)."""
    return message.__dict__.get("_message", message)
