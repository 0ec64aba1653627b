"""The Dramatiq middleware of soulspot-jobs, one per module, and the stack they form.

* :class:`CircuitBreakerMiddleware` (``breakers``): a tagged message runs only while its
  service's breaker admits it; its outcome is reported to the breaker.
* :class:`DeferringRetries` (``retries``): Dramatiq's Retries, deciding in one place what a
  failed or held message becomes: deferred, dead-lettered with a reason, or retried.
* :class:`DeferredRelease` (``release``): a service's deferred messages run the moment its
  breaker closes, in every worker process.
* :class:`DeferralAwareCallbacks` (``callbacks``): Dramatiq's Callbacks; a deferral fires none.
* :class:`Recovery` (``recovery``): heartbeats; requeues dead workers' and its own lost messages.
* :class:`OrphanCheck` (``orphans``): requeues, then fails, jobs whose messages vanished.
* :class:`DaemonAsyncIO` (``asyncio``), :class:`ExitGuard` (``exit_guard``): a worker process
  always exits on SIGTERM.
* :class:`DramatiqPrometheus` (``prometheus``): Dramatiq's metrics, deferrals not miscounted.

:func:`middleware_stack` (``stack``) puts them in the one order that works.
"""

from soulspot_jobs.middleware.asyncio import DaemonAsyncIO
from soulspot_jobs.middleware.breakers import CircuitBreakerMiddleware
from soulspot_jobs.middleware.callbacks import DeferralAwareCallbacks
from soulspot_jobs.middleware.exit_guard import ExitGuard
from soulspot_jobs.middleware.release import DeferredRelease
from soulspot_jobs.middleware.retries import DeferringRetries
from soulspot_jobs.middleware.stack import middleware_stack

__all__ = [
    "CircuitBreakerMiddleware",
    "DaemonAsyncIO",
    "DeferralAwareCallbacks",
    "DeferredRelease",
    "DeferringRetries",
    "ExitGuard",
    "middleware_stack",
]
