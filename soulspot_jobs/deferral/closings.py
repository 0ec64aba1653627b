"""``Closings``: which changes of the breakers are closings, from the changes they publish.

The breakers' Redis backend publishes every change of a breaker's state on one channel, as a
JSON array ``[name, now, state, ...]`` (the backend may append fields; only these three are
read). A breaker *closes* when it is seen CLOSED after anything else: a HALF_OPEN trial
succeeded, an operator reset it, a mode change closed it. Whoever watches the channel (the
:mod:`~soulspot_jobs.middleware.release` middleware, the demo) keeps one ``Closings`` and asks
it about each change; nothing here does I/O.

A breaker never seen before counts as not CLOSED: the first CLOSED seen of it is a closing.
That is the safe side for releasing deferred messages: a message waits only for a service that
was down, so running it once that service's breaker is CLOSED is right even when the watcher
did not see the breaker open.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

#: The state a closing goes to, as the breakers publish it.
CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Change:
    """One published change of a breaker."""

    #: The breaker's name (its service).
    name: str
    #: When it changed, in epoch seconds of the Redis server's clock.
    at: float
    #: Its state since: ``closed``, ``open`` or ``half_open``.
    state: str


def parse_change(data: bytes | str) -> Change | None:
    """The change a published message describes; ``None`` for anything else on the channel."""
    try:
        event = json.loads(data)
        name, at, state = event[0], float(event[1]), event[2]
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    if not isinstance(name, str) or not isinstance(state, str):
        return None
    return Change(name, at, state)


class Closings:
    """The last state seen of each breaker; :meth:`seen` says which changes close one."""

    def __init__(self) -> None:
        self._states: dict[str, str] = {}
        self._lock = threading.Lock()

    def seen(self, name: str, state: str) -> bool:
        """Note that ``name`` is in ``state`` now; True when that closes it (see the module doc)."""
        with self._lock:
            previous = self._states.get(name)
            self._states[name] = state
        return state == CLOSED and previous != CLOSED

    def state(self, name: str) -> str | None:
        """The last state seen of ``name``; ``None`` if never seen."""
        with self._lock:
            return self._states.get(name)
