"""How every job step records itself: attempts, state, errors, and the job's final outcome;
and how the messages of a cancelled job end.

A cancelled job's message (queued, delayed, deferred) ends without calling any upstream, is
acknowledged, and is neither retried nor dead-lettered: Dramatiq *skips* it
(:class:`dramatiq.middleware.SkipMessage`), which gives its breaker permit back without an
outcome and takes it off the deferred index. It is seen where a record is read anyway, so no
other message pays a round trip for it:

* a message its breaker admitted: in the update that starts the step (:func:`job_step`; a
  cancelled record answers :attr:`~.records.Update.CANCELLED` and is not written);
* a message its breaker refused, which would be deferred again and again: by
  :class:`CancelledJobs`, before the refusal, with one read of the job's state, only for those.

Each stopped message is logged once (``job.cancelled``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import CurrentMessage, Middleware, SkipMessage

from soulspot_jobs.errors import (
    HoldBack,
    MalformedMessage,
    ServiceOutage,
    SoulspotJobsError,
    UpstreamRequestError,
)
from soulspot_jobs.jobs.records import JobState, JobStore, Update

log = structlog.get_logger("soulspot_jobs.jobs")

#: Backoff of Dramatiq's retries of a job step, in milliseconds. A step is retried when it ran
#: and failed (a bug, a service failure); a step held back by an outage is deferred instead. A
#: poll or a search retried a second later is cheap; Dramatiq's own default (15 s, doubling)
#: would stall a job's chain for no gain.
BACKOFF = {"min_backoff": 1_000, "max_backoff": 60_000}


class JobFailed(SoulspotJobsError):
    """A job cannot succeed (no file found, every download failed): record it, do not retry."""


def job_step(
    store: JobStore, state: JobState, service: str, *, max_retries: int
) -> Callable[[Callable[[str], Any]], Callable[[str], Any]]:
    """Wrap an actor body ``fn(job_id)`` so its job record follows what happens.

    * Before the body: the job is in ``state``, waiting on ``service``, one more attempt. A
      cancelled job's record is left as it is and the message is skipped
      (:class:`~dramatiq.middleware.SkipMessage`): the body never runs.
    * :class:`JobFailed` or the job's own upstream error (404, bad request): the job is
      ``failed`` with the reason, and the message ends normally (retrying cannot help).
    * A hold (a breaker's refusal, :class:`~soulspot_jobs.errors.RetryLater`) passes through:
      the project's Retries defers the message and marks the job ``deferred``. So does an
      outage of the service (:class:`~soulspot_jobs.errors.ServiceOutage`), kept as
      ``last_error``: it is counted by the breaker, but it is no failure of the job.
    * A message naming no known job is dead-lettered with the reason (:class:`MalformedMessage`).
    * Anything else is recorded as ``last_error`` and re-raised for Dramatiq's retries; on the
      last retry the job is ``failed``.
    """

    def decorate(fn: Callable[[str], Any]) -> Callable[[str], Any]:
        @functools.wraps(fn)
        def step(job_id: str) -> Any:
            started = isinstance(job_id, str) and store.update(
                job_id, state=state, service=service, count_attempt=True
            )
            if not started:
                raise MalformedMessage(f"no job record {job_id!r}")
            if started is Update.CANCELLED:
                message = CurrentMessage.get_current_message()
                message_id = message.message_id if message is not None else None
                raise SkipMessage(cancelled(job_id, fn.__name__, message_id))
            with structlog.contextvars.bound_contextvars(job_id=job_id, step=fn.__name__):
                try:
                    return fn(job_id)
                except (JobFailed, UpstreamRequestError) as exc:
                    fail(store, job_id, str(exc))
                    return None
                except HoldBack:
                    raise
                except ServiceOutage as exc:  # deferred by the project's Retries, not retried
                    store.update(job_id, last_error=str(exc))
                    raise
                except Exception as exc:
                    last_try = _retries_so_far() >= max_retries
                    if last_try:
                        fail(store, job_id, str(exc))
                    else:
                        store.update(job_id, last_error=str(exc))
                    raise

        return step

    return decorate


def cancelled(job_id: str, actor: str, message_id: str | None) -> str:
    """Log that the message ``message_id`` of the cancelled job ``job_id`` ends here; returns
    why, in words."""
    reason = f"Job {job_id} was cancelled: its {actor} message ends without running."
    log.info(reason, event_name="job.cancelled", job_id=job_id, actor=actor, message_id=message_id)
    return reason


class CancelledJobs(Middleware):
    """Skips a job step its breaker refused when the job was cancelled, instead of its deferral.

    Placed after the :class:`~soulspot_jobs.middleware.breakers.CircuitBreakerMiddleware`
    (``admission``): a job step it admitted is checked by the step itself (:func:`job_step`,
    no extra round trip); one it refused never reaches the step, and would be deferred for as
    long as the breaker stays OPEN, so its job's state is read here (one HGET, refused job steps
    only). Messages of other actors cost a set look-up.
    """

    def __init__(self, store: JobStore, *, job_actors: Iterable[str], admission: Any) -> None:
        self.store = store
        self.job_actors = frozenset(job_actors)
        self.admission = admission

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if message.actor_name not in self.job_actors or message.failed:
            return
        if self.admission.current_permit() is not None:
            return  # admitted: the step's own update sees a cancellation
        args = message.args
        if not args or not isinstance(args[0], str):
            return
        if self.store.state_of(args[0]) is JobState.CANCELLED:
            raise SkipMessage(cancelled(args[0], message.actor_name, message.message_id))


def fail(store: JobStore, job_id: str, reason: str) -> None:
    store.update(job_id, state=JobState.FAILED, last_error=reason)
    log.warning(f"Job {job_id} failed: {reason}", event_name="job.failed", job_id=job_id)


def _retries_so_far() -> int:
    message = CurrentMessage.get_current_message()
    return 0 if message is None else int(message.options.get("retries", 0))
