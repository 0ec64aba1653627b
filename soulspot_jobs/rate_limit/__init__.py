"""Rate limiters that keep every worker of the cluster under an upstream's request rate.

``RedisRateLimiter`` spaces the requests of all processes on all hosts sharing a Redis key;
``MemoryRateLimiter`` those of one process. Both raise ``RetryLater`` rather than park a worker
thread for longer than the caller allows.
"""

from soulspot_jobs.rate_limit.limiter import (
    BUSY_REASON,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
)

__all__ = ["BUSY_REASON", "MemoryRateLimiter", "RateLimiter", "RedisRateLimiter"]
