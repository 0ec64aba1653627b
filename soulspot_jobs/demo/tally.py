"""``RunTally``: what each message had been through when it ran, counted in Redis for the demo.

The demo's summary claims how many Dramatiq retries the slskd outage cost, how many times jobs
were deferred, and how soon deferred jobs ran once slskd's breaker closed. None of it can be read
off the job records, so the demo's worker processes carry this middleware: as a message is about
to run, it records the message's ``retries`` option (set by the Retries middleware) and its
deferral count (set on its deferred copy) under the message id. Both only grow over a message's
life, so the sum over every message id, once all jobs are done, is the number of retries spent
and of deferrals made. Once a deferred message has run (its actor was called: neither refused by
its breaker nor held back from inside), it records when it started, by the Redis server's clock
(the clock the breakers' ``last_state_change`` is on).

Layout (one hash per count, message id -> the highest count seen): ``Keys.demo_retries`` and
``Keys.demo_deferrals(service)``, the service being the one that deferred the message last
(the demo's actors are only ever deferred by their own service); the starts in
``Keys.demo_deferred_runs(service)`` (a sorted set). Each write renews a TTL. While the demo
runs, deferrals of messages still waiting are not in the tally yet; they are once every job is
done.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import Middleware

from soulspot_jobs.deferral.options import DEFERRALS, DEFERRED_BY
from soulspot_jobs.errors import Failure, classify
from soulspot_jobs.keys import Keys

#: Seconds the tally's keys live after their last write.
TTL = 24 * 60 * 60
#: The Lua script that keeps the highest count seen per message: KEYS[1] the hash,
#: ARGV[1] the message id, ARGV[2] the count, ARGV[3] the TTL in seconds. Returns nothing.
_KEEP_MAX = """
local seen = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > seen then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
"""
#: The Lua script that records when a message started to run, by the Redis server's clock:
#: KEYS[1] the sorted set, ARGV[1] the member, ARGV[2] seconds the message has been running,
#: ARGV[3] the TTL in seconds. Returns nothing.
_RAN = """
local now = redis.call('TIME')
local started = tonumber(now[1]) + tonumber(now[2]) / 1000000 - tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.6f', started), ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
"""


class RunTally(Middleware):
    """Records, as each message starts running, the retries and deferrals it went through."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._keep_max = client.register_script(_KEEP_MAX)
        self._ran = client.register_script(_RAN)
        #: ``time.monotonic()`` when the current worker thread's message began.
        self._started = threading.local()

    @property
    def retries_key(self) -> str:
        return self.keys.demo_retries

    def deferrals_key(self, service: str) -> str:
        return self.keys.demo_deferrals(service)

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """Counts only grow over a message's life, so recording one more time changes nothing."""
        retries = int(message.options.get("retries", 0))
        if retries:
            self._keep_max(keys=[self.retries_key], args=[message.message_id, retries, TTL])
        deferrals = int(message.options.get(DEFERRALS, 0))
        if deferrals:
            key = self.deferrals_key(message.options.get(DEFERRED_BY, "unknown"))
            self._keep_max(keys=[key], args=[message.message_id, deferrals, TTL])
        self._started.at = time.monotonic()

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        """A deferred message that ran records when it started."""
        deferrals = int(message.options.get(DEFERRALS, 0))
        if not deferrals or (exception is not None and classify(exception) is Failure.HOLD):
            return
        running = time.monotonic() - getattr(self._started, "at", time.monotonic())
        key = self.keys.demo_deferred_runs(message.options.get(DEFERRED_BY, "unknown"))
        member = f"{message.message_id}:{deferrals}"
        self._ran(keys=[key], args=[member, repr(running), TTL])


def read_tally(client: redis.Redis, keys: Keys, services: tuple[str, ...]) -> dict[str, Any]:
    """``{"retries": n, "deferrals": {service: n}}`` as recorded so far."""
    pipe = client.pipeline(transaction=False)
    pipe.hvals(keys.demo_retries)
    for service in services:
        pipe.hvals(keys.demo_deferrals(service))
    retries, *deferrals = pipe.execute()
    return {
        "retries": sum(int(value) for value in retries),
        "deferrals": {
            service: sum(int(value) for value in values)
            for service, values in zip(services, deferrals, strict=True)
        },
    }


def deferred_runs(client: redis.Redis, keys: Keys, service: str, since: float) -> list[float]:
    """When messages deferred by ``service`` started to run from ``since`` on (epoch seconds of
    the Redis server), earliest first."""
    runs = client.zrangebyscore(keys.demo_deferred_runs(service), since, "+inf", withscores=True)
    return [score for _, score in runs]
