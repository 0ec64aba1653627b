"""How every job step records itself: attempts, state, errors, and the job's final outcome."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import structlog
from dramatiq.middleware import CurrentMessage

from soulspot_jobs.errors import (
    HoldBack,
    MalformedMessage,
    ServiceOutage,
    SoulspotJobsError,
    UpstreamRequestError,
)
from soulspot_jobs.jobs.records import JobState, JobStore

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

    * Before the body: the job is in ``state``, waiting on ``service``, one more attempt.
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
            known = isinstance(job_id, str) and store.update(
                job_id, state=state, service=service, count_attempt=True
            )
            if not known:
                raise MalformedMessage(f"no job record {job_id!r}")
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


def fail(store: JobStore, job_id: str, reason: str) -> None:
    store.update(job_id, state=JobState.FAILED, last_error=reason)
    log.warning(f"Job {job_id} failed: {reason}", event_name="job.failed", job_id=job_id)


def _retries_so_far() -> int:
    message = CurrentMessage.get_current_message()
    return 0 if message is None else int(message.options.get("retries", 0))
