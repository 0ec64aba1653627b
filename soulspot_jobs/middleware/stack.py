"""``middleware_stack``: the project's middleware, in the one order that works.

    broker = StubBroker(middleware=middleware_stack(breakers, deferrals))

The list is Dramatiq's default middleware with two of them replaced and three added:

    (Prometheus), (Recovery), WorkerPresence, AgeLimit, TimeLimit, ShutdownNotifications,
    DeferralAwareCallbacks, Pipelines, DeferringRetries, CircuitBreakerMiddleware,
    DeferredRelease, DaemonAsyncIO, ExitGuard

* :class:`~.retries.DeferringRetries` takes Retries' place: the one decision of what a failed
  or held message becomes.
* :class:`~.callbacks.DeferralAwareCallbacks` takes Callbacks' place: a deferral fires no
  callback.
* :class:`~.breakers.CircuitBreakerMiddleware` comes right after the Retries it reports to:
  Dramatiq calls ``after_*`` hooks in reverse order, so the outcome is reported to the breaker
  before Retries decides.
* AgeLimit comes before it, so that an expired message is dead-lettered without taking a trial
  slot; Recovery (Redis brokers) first of all, so that it notes each message before any other
  middleware may enqueue on its behalf.
* :class:`~.release.DeferredRelease` handles no message: on the worker's boot and shutdown it
  starts and stops the thread that releases a service's deferred messages once its breaker
  closes, before ExitGuard bounds the shutdown.
* :class:`~.asyncio.DaemonAsyncIO` runs ``async def`` actors; :class:`~.exit_guard.ExitGuard`
  bounds a worker process's shutdown.

A broker built with this list needs nothing else; Results, GroupCallbacks, dramatiq-abort or
any other middleware a program adds afterwards work with deferred messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dramatiq.middleware import (
    AgeLimit,
    Middleware,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from soulspot_jobs.circuit_breaker import Breakers
from soulspot_jobs.deferral.deferrals import Deferrals
from soulspot_jobs.deferral.reasons import DeadLetterReasons
from soulspot_jobs.middleware.asyncio import DaemonAsyncIO
from soulspot_jobs.middleware.breakers import CircuitBreakerMiddleware
from soulspot_jobs.middleware.callbacks import DeferralAwareCallbacks
from soulspot_jobs.middleware.exit_guard import ExitGuard
from soulspot_jobs.middleware.release import DeferredRelease
from soulspot_jobs.middleware.retries import DeferringRetries


def middleware_stack(
    breakers: Breakers,
    deferrals: Deferrals,
    *,
    reasons: DeadLetterReasons | None = None,
    on_dead_letter: Callable[[Any, str], None] | None = None,
    first: tuple[Middleware, ...] = (),
    retries: dict[str, Any] | None = None,
) -> list[Middleware]:
    """The project's middleware list (see the module docstring).

    ``first`` goes before everything (Prometheus, Recovery); ``retries`` are Dramatiq's
    Retries options (``max_retries``, ``min_backoff``, ``max_backoff``, ``retry_when``).
    """
    admission = CircuitBreakerMiddleware(breakers=breakers)
    decision = DeferringRetries(
        deferrals=deferrals,
        reasons=reasons,
        failure_left_open=admission.failure_left_open,
        state_of=lambda service: _state_of(breakers, service),
        on_dead_letter=on_dead_letter,
        **(retries or {}),
    )
    return [
        *first,
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        DeferralAwareCallbacks(),
        Pipelines(),
        decision,
        admission,
        DeferredRelease(breakers=breakers),
        DaemonAsyncIO(),
        ExitGuard(),
    ]


def _state_of(breakers: Breakers, service: str) -> str:
    """The state of ``service``'s breaker, for a log line (``unknown`` if unreadable)."""
    try:
        return breakers[service].stats.state.value
    except Exception:  # noqa: BLE001 - a log field must not fail a deferral
        return "unknown"
