"""The project's error tree, and the one classification of exceptions by what they say.

Every error soulspot-jobs raises on purpose derives from :class:`SoulspotJobsError`. The errors
that hold a message back (:class:`HoldBack`: a breaker's refusal, :class:`RetryLater`) are also
:class:`dramatiq.Retry`, which Dramatiq's worker already treats as "not an error": it logs no
traceback for them, and Dramatiq's own Retries would run the message again after their
``delay``. The project's Retries (:mod:`soulspot_jobs.middleware.retries`) defers them instead,
spending no retry.

:func:`classify` says what any exception means for an upstream service; :func:`is_service_failure`
and :func:`counts_against_service` are the two rules built on it (an exception escaping an
actor, and one raised by a client).
"""

from __future__ import annotations

import math
from enum import Enum

import dramatiq
from dramatiq.middleware.time_limit import TimeLimitExceeded
from dramatiq.rate_limits import RateLimitExceeded


class SoulspotJobsError(Exception):
    """Root of every error raised by soulspot-jobs."""


class ConfigurationError(SoulspotJobsError, ValueError):
    """A setting or a constructor argument has a value soulspot-jobs cannot work with."""


class UpstreamError(SoulspotJobsError):
    """An upstream API (slskd, MusicBrainz, Spotify) did not give the answer a job needed."""

    def __init__(self, service: str, message: str, *, status: int | None = None) -> None:
        self.service = service
        self.status = status
        #: The message without the service's name in front (``str(exc)`` has it).
        self.detail = message
        super().__init__(f"{service}: {message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.__dict__, self.args))


class ServiceUnavailableError(UpstreamError):
    """The service itself failed: connection error, timeout, 5xx, 408 or 429.

    Always a failure of the service's circuit breaker (for the middleware, with the builtin
    network errors, the only one: see :func:`is_service_failure`). ``retry_after``
    is the service's own ``Retry-After`` (seconds), when it sent one: the breaker then stays OPEN
    at least that long for every worker.
    """

    def __init__(
        self,
        service: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(service, message, status=status)
        self.retry_after = retry_after


class ServiceOutage(ServiceUnavailableError, dramatiq.Retry):
    """The service answered, and its answer means it can serve no job now, whatever the job.

    slskd logged out of the Soulseek network (409 to a search), or credentials the service
    refuses (:class:`UnauthorizedError`). Counted by the service's breaker like any failure of
    the service, but the job that met it is *deferred*, not retried: it did nothing wrong, and
    its retries are kept for its own failures. ``outage`` is the short reason shown by
    ``status``, ``/health`` and ``/metrics`` (``"not logged in to Soulseek"``).
    ``opens_at_once``: one answer is proof enough, the breaker opens without waiting for its
    failure threshold (wrong credentials do not mend themselves).

    As a :class:`dramatiq.Retry` it is no "unhandled exception" to Dramatiq's worker (which
    logs those with a traceback): the breaker's transition and the deferral say what happened.
    """

    def __init__(
        self,
        service: str,
        message: str,
        *,
        outage: str,
        status: int | None = None,
        retry_after: float | None = None,
        opens_at_once: bool = False,
    ) -> None:
        super().__init__(service, message, status=status, retry_after=retry_after)
        Exception.__init__(self, self.message)  # dramatiq.Retry's __init__ leaves args empty
        self.delay = None if retry_after is None else math.ceil(retry_after * 1000)
        self.outage = outage
        self.opens_at_once = opens_at_once


class UnauthorizedError(ServiceOutage):
    """The service refused our credentials (401; Spotify's ``invalid_client``): the *settings*
    are wrong, not the job. ``variable`` names the setting to fix; the breaker opens at once
    with the reason ``unauthorized (check <variable>)``."""

    def __init__(
        self, service: str, message: str, *, variable: str, status: int | None = None
    ) -> None:
        super().__init__(
            service,
            message,
            outage=f"unauthorized (check {variable})",
            status=status,
            opens_at_once=True,
        )
        self.variable = variable


class UpstreamRequestError(UpstreamError):
    """The service answered, but refused this request (a 4xx): the job's own error.

    Never counted against the service's breaker.
    """


class NotFoundError(UpstreamRequestError):
    """The service answered 404: what the job asked for does not exist."""


class PeerUnavailableError(UpstreamRequestError):
    """slskd works, but one Soulseek peer could not give us a file: the peer is offline,
    unreachable, refused or timed out, or slskd declined to enqueue that file.

    Peers come and go all the time on Soulseek, so this is never a failure of the ``slskd-api``
    breaker; a download job remembers ``username`` and moves on to its next candidate.
    ``reason`` is slskd's own explanation.
    """

    def __init__(
        self, service: str, username: str, reason: str, *, status: int | None = None
    ) -> None:
        super().__init__(service, f"peer {username!r} is unavailable: {reason}", status=status)
        self.username = username
        self.reason = reason


def _rebuild(cls: type, state: dict, args: tuple) -> UpstreamError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class HoldBack(SoulspotJobsError, dramatiq.Retry):
    """A job cannot go on now but has not failed: its message waits ``retry_after`` seconds.

    ``service`` is the service that holds it back. As a :class:`dramatiq.Retry`, its ``delay``
    is ``retry_after`` in milliseconds (rounded up), so even a broker without the project's
    Retries runs the message again no earlier than that.
    """

    def __init__(self, service: str, retry_after: float, message: str) -> None:
        SoulspotJobsError.__init__(self, message)
        self.message = message
        self.delay = math.ceil(retry_after * 1000)
        self.service = service
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class RetryLater(HoldBack):
    """A job holds itself back (a service asked for back-pressure, a shared rate limit is busy):
    its message is deferred ``retry_after`` seconds without counting a failure or a retry."""

    def __init__(self, service: str, retry_after: float, reason: str) -> None:
        self.reason = reason
        super().__init__(
            service, retry_after, f"{service}: {reason}. Retry after {retry_after:.1f} seconds."
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.service, self.retry_after, self.reason))


class MalformedMessage(SoulspotJobsError):
    """A message a job cannot even start on (unknown job id, wrong arguments).

    The circuit-breaker middleware sends its message to the dead-letter queue with this reason
    in its options; retrying could never help.
    """


class JobNotFound(SoulspotJobsError, LookupError):
    """No job record has the id given (it never existed, or its record expired)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id!r}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.job_id,))


class JobAlreadyFinal(SoulspotJobsError):
    """The job is already in a final state (done, failed, cancelled): there is nothing to stop.

    ``state`` is that state's name (``"done"``...).
    """

    def __init__(self, job_id: str, state: str) -> None:
        self.job_id = job_id
        self.state = state
        super().__init__(f"job {job_id} is already {state}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.job_id, self.state))


class InvalidJobError(SoulspotJobsError, ValueError):
    """A job was asked for with an argument it could never run with; nothing was enqueued.

    ``argument`` names the argument (``query``, ``playlist``, ``isrc``...); the message says what
    was wrong and what is accepted, quoting at most the start of the value.
    """

    def __init__(self, argument: str, reason: str) -> None:
        self.argument = argument
        self.reason = reason
        super().__init__(f"invalid {argument}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.argument, self.reason))


class Failure(Enum):
    """What an exception says about the upstream service a call or a job was talking to."""

    #: The service failed: no connection, a timeout, a 5xx, 408 or 429, a job past its time limit.
    SERVICE = "service"
    #: The service can serve no job now (:class:`ServiceOutage`): counted like ``SERVICE``, but
    #: the job is deferred rather than retried.
    OUTAGE = "outage"
    #: The service works but refused this request (a 4xx, an unavailable Soulseek peer).
    REQUEST = "request"
    #: The message was held back (a breaker's refusal, back-pressure): no outcome at all.
    HOLD = "hold"
    #: Says nothing of the service: an explicit ``dramatiq.Retry``, a Dramatiq rate limit.
    NEUTRAL = "neutral"
    #: The message cannot even start (unknown job, wrong arguments).
    MALFORMED = "malformed"
    #: Anything else: a bug in a job, or an error of a client this module does not know.
    OTHER = "other"


def classify(exc: BaseException) -> Failure:
    """The one classification of exceptions; see :class:`Failure`."""
    if isinstance(exc, HoldBack):
        return Failure.HOLD
    if isinstance(exc, ServiceOutage):
        return Failure.OUTAGE
    if isinstance(exc, ServiceUnavailableError | ConnectionError | TimeoutError):
        return Failure.SERVICE
    if isinstance(exc, TimeLimitExceeded):
        return Failure.SERVICE
    if isinstance(exc, UpstreamRequestError):
        return Failure.REQUEST
    if isinstance(exc, MalformedMessage):
        return Failure.MALFORMED
    if isinstance(exc, dramatiq.Retry | RateLimitExceeded):
        return Failure.NEUTRAL
    return Failure.OTHER


def is_service_failure(exc: BaseException) -> bool:
    """The rule for an exception escaping a tagged actor: only the service's own failures trip
    its breaker; a job's own errors and bugs in our code never do."""
    return classify(exc) in _SERVICE_FAILURES


def counts_against_service(exc: BaseException) -> bool:
    """The rule for an exception raised by a guarded client (the design's wrappers): the
    service's failures and anything unexpected the client raised count; the caller's own errors,
    holds and neutral exceptions do not."""
    return isinstance(exc, Exception) and classify(exc) in _COUNTED_FROM_CLIENTS


def failure_reason(exc: BaseException, *, limit: int = 200) -> str:
    """What a breaker records as the reason of a failure it counted: a
    :class:`ServiceOutage`'s short reason, else the error's own words (without the service's
    name, at most ``limit`` characters)."""
    if isinstance(exc, ServiceOutage):
        return exc.outage
    if isinstance(exc, TimeLimitExceeded):
        return "a job ran past its time limit"
    if isinstance(exc, UpstreamError):
        text = exc.detail
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


_SERVICE_FAILURES = frozenset({Failure.SERVICE, Failure.OUTAGE})
_COUNTED_FROM_CLIENTS = frozenset({Failure.SERVICE, Failure.OUTAGE, Failure.OTHER})
