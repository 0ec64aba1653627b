"""The project's error tree: every error soulspot-jobs raises on purpose derives from one root."""


class SoulspotJobsError(Exception):
    """Root of every error raised by soulspot-jobs."""


class ConfigurationError(SoulspotJobsError, ValueError):
    """A setting or a constructor argument has a value soulspot-jobs cannot work with."""


class UpstreamError(SoulspotJobsError):
    """An upstream API (slskd, MusicBrainz, Spotify) did not give the answer a job needed."""

    def __init__(self, service: str, message: str, *, status: int | None = None) -> None:
        self.service = service
        self.status = status
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


def is_service_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the upstream service is unhealthy (and should trip its breaker).

    A job's own errors (bad request, not found) and bugs in our code do not: only
    :class:`ServiceUnavailableError` and the builtin network errors do.
    """
    return isinstance(exc, ServiceUnavailableError | ConnectionError | TimeoutError)


def _rebuild(cls: type, state: dict, args: tuple) -> UpstreamError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class RetryLater(SoulspotJobsError):
    """A job cannot go on now but has not failed: its message is deferred, not retried.

    Raised from inside an actor (a service asked for back-pressure, a shared rate limit is
    busy); the circuit-breaker middleware re-enqueues the message after ``retry_after`` seconds
    without counting a failure or consuming a retry.
    """

    def __init__(self, service: str, retry_after: float, reason: str) -> None:
        self.service = service
        self.retry_after = retry_after
        self.reason = reason
        super().__init__(f"{service}: {reason}. Retry after {retry_after:.1f} seconds.")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.service, self.retry_after, self.reason))


class MalformedMessage(SoulspotJobsError):
    """A message a job cannot even start on (unknown job id, wrong arguments).

    The circuit-breaker middleware sends its message to the dead-letter queue with this reason
    in its options; retrying could never help.
    """


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
