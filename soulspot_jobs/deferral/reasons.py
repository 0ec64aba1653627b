"""``DeadLetterReasons``: why the project's Retries dead-lettered a message.

A broker dead-letters a message as it was last enqueued, so the reason cannot travel inside it;
it is kept beside it instead, one Redis key per message id (``Keys.dead_letter_reason``) that
expires with Dramatiq's own dead letters, or in process memory for brokers without Redis (tests
on the StubBroker). Dead letters of Dramatiq's own making (retries exhausted, ``throws``, an
expired ``max_age``) have no entry: their reason is read off the message itself.
"""

from __future__ import annotations

import threading

import redis

from soulspot_jobs.keys import Keys

#: Seconds a reason is kept: Dramatiq keeps dead letters 7 days by default.
REASON_TTL = 7 * 24 * 60 * 60


class DeadLetterReasons:
    """Reasons by message id, in Redis (``client``) or, without one, in this process."""

    def __init__(self, client: redis.Redis | None = None, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()
        self._memory: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, message_id: str, reason: str) -> None:
        if self.client is None:
            with self._lock:
                self._memory[message_id] = reason
            return
        self.client.set(self.keys.dead_letter_reason(message_id), reason, ex=REASON_TTL)

    def get_many(self, message_ids: list[str]) -> dict[str, str]:
        """The recorded reasons of ``message_ids`` (ids without one left out)."""
        if self.client is None:
            with self._lock:
                return {i: self._memory[i] for i in message_ids if i in self._memory}
        if not message_ids:
            return {}
        values = self.client.mget([self.keys.dead_letter_reason(i) for i in message_ids])
        return {
            message_id: value.decode() if isinstance(value, bytes) else value
            for message_id, value in zip(message_ids, values, strict=True)
            if value is not None
        }

    def get(self, message_id: str) -> str | None:
        return self.get_many([message_id]).get(message_id)
