"""What an operator can do from the page, each the same operation as its CLI command.

Each action takes the application, the thing it acts on (a service, a message id, a job id) and
the submitted form, does one thing, and returns the sentence the page shows; what cannot be done
raises :class:`ActionFailed` with the HTTP status that says why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from soulspot_jobs.circuit_breaker import validate_open_duration
from soulspot_jobs.deferral.dead_letters import DeadLetterNotFound
from soulspot_jobs.errors import JobAlreadyFinal, JobNotFound
from soulspot_jobs.operate.health import SERVICES

if TYPE_CHECKING:
    from soulspot_jobs.jobs.app import SoulspotJobs

Action = Callable[["SoulspotJobs", str, Mapping[str, str]], str]

#: Seconds a breaker is forced OPEN when the form gives none (as ``soulspot-jobs open``).
DEFAULT_OPEN_SECONDS = 3600.0


class ActionFailed(Exception):
    """An action that could not be done: 400 bad input, 404 not found, 409 not now."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def reset_breaker(app: SoulspotJobs, service: str, form: Mapping[str, str]) -> str:
    breaker = app.breakers[_breaker_name(service)]
    breaker.reset_sync()
    return f"Circuit breaker {breaker.name} is {breaker.stats.state.value.upper()}."


def open_breaker(app: SoulspotJobs, service: str, form: Mapping[str, str]) -> str:
    raw = (form.get("seconds") or "").strip() or str(DEFAULT_OPEN_SECONDS)
    try:
        seconds = validate_open_duration(float(raw))
    except ValueError as exc:
        raise ActionFailed(400, f"seconds={raw!r}: {exc}") from None
    breaker = app.breakers[_breaker_name(service)]
    breaker.force_open_sync(seconds)
    return f"Circuit breaker {breaker.name} is OPEN for {seconds:g} s."


def set_breaker_mode(app: SoulspotJobs, service: str, form: Mapping[str, str]) -> str:
    """The form's ``mode`` (``normal``, ``disabled``, ``metrics_only``); ``forced_open`` is the
    ``open`` action, with its period."""
    mode = (form.get("mode") or "").strip()
    if mode == "forced_open":
        return open_breaker(app, service, form)
    breaker = app.breakers[_breaker_name(service)]
    try:
        breaker.set_mode_sync(mode)
    except ValueError as exc:
        raise ActionFailed(400, f"mode={mode!r}: {exc}") from None
    return f"Circuit breaker {breaker.name} is in mode {mode}."


def requeue_dead_letter(app: SoulspotJobs, message_id: str, form: Mapping[str, str]) -> str:
    try:
        letter = app.dead_letters().requeue(message_id)
    except DeadLetterNotFound:
        raise ActionFailed(404, f"no dead letter {message_id}") from None
    return f"Requeued {letter.message_id} ({letter.actor}) on {letter.queue}."


def delete_dead_letter(app: SoulspotJobs, message_id: str, form: Mapping[str, str]) -> str:
    try:
        letter = app.dead_letters().delete(message_id)
    except DeadLetterNotFound:
        raise ActionFailed(404, f"no dead letter {message_id}") from None
    return f"Deleted dead letter {letter.message_id} ({letter.actor})."


def cancel_job(app: SoulspotJobs, job_id: str, form: Mapping[str, str]) -> str:
    try:
        job = app.cancel_job(job_id)
    except JobNotFound:
        raise ActionFailed(404, f"no job {job_id}") from None
    except JobAlreadyFinal as exc:
        raise ActionFailed(409, str(exc)) from None
    return f"Job {job.id} is {job.state.value}."


#: ``POST /actions/<kind>/<target>/<verb>`` -> the action.
ACTIONS: dict[tuple[str, str], Action] = {
    ("breakers", "reset"): reset_breaker,
    ("breakers", "open"): open_breaker,
    ("breakers", "mode"): set_breaker_mode,
    ("dead-letters", "requeue"): requeue_dead_letter,
    ("dead-letters", "delete"): delete_dead_letter,
    ("jobs", "cancel"): cancel_job,
}


def _breaker_name(service: str) -> str:
    if service in SERVICES.values():
        return service
    if service in SERVICES:
        return SERVICES[service]
    raise ActionFailed(404, f"no breaker {service!r}")
