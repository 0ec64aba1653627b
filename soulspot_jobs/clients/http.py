"""What every upstream client shares: an httpx client and one classification of answers.

Connection errors, timeouts, 5xx, 408 (the service timed out waiting) and 429 are failures of
the service (:class:`ServiceUnavailableError`, counted by its breaker; a ``Retry-After`` travels
with it). Other 4xx are the job's own errors (:class:`UpstreamRequestError`,
:class:`NotFoundError`), never counted. A success whose body is not the JSON the API promises
(an HTML page from a proxy, a truncated body, an object without the fields every answer has) is
the service misbehaving too:
:func:`json_body` makes it a :class:`ServiceUnavailableError`. The translation happens here,
once, for all three clients.

Each client knows its API in one place, without I/O (*sans-I/O*): an operation is a generator,
a :data:`Flow`, that yields the :class:`Request` objects to send (and the other steps it needs:
a pause, a rate-limit slot, a token) and reads the answers sent back into it. :func:`drive`
runs a flow on the synchronous :class:`UpstreamHttp`, :func:`drive_async` on
:class:`AsyncUpstreamHttp`; both classify every answer the same way, so the sync and async
clients differ only in how they wait.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import httpx

from soulspot_jobs.errors import (
    NotFoundError,
    ServiceOutage,
    ServiceUnavailableError,
    UnauthorizedError,
    UpstreamRequestError,
)

#: Longest ``Retry-After`` honoured, in seconds (a broken header must not stall a service a day).
MAX_RETRY_AFTER = 3600.0

#: 4xx answers that are the service's trouble, not the request's: 408 Request Timeout, 429.
SERVICE_SIDE_4XX = frozenset({408, 429})

T = TypeVar("T")
#: Tells, from an error answer and the service's own words in it, that the service can serve no
#: job at all now (slskd logged out of Soulseek): the outage's short reason, else ``None``.
OutageRule: TypeAlias = Callable[[httpx.Response, str], "str | None"]
#: Reads a service's own error message out of an error answer (``None``: use the raw body).
ErrorMessage = Callable[[httpx.Response], "str | None"]


@dataclass(frozen=True)
class Request:
    """One HTTP request a flow wants sent: ``url`` relative to the service's base URL, or
    absolute (another host of the same service, such as Spotify's accounts service)."""

    method: str
    url: str
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None
    json: Any = None
    data: Mapping[str, str] | None = None
    #: Seconds for this request, when it needs longer than the client's own timeout.
    timeout: float | None = None


@dataclass(frozen=True)
class Pause:
    """A step that waits ``seconds`` (``time.sleep`` in the sync form, ``asyncio.sleep`` in the
    async one)."""

    seconds: float


#: An API operation without I/O: yields :class:`Request` (answered with the classified
#: ``httpx.Response``), :class:`Pause` (answered with ``None``) or a client's own steps
#: (answered by the client's ``perform``); an error is raised into the flow where it yielded.
#: Its return value is the operation's result.
Flow: TypeAlias = Generator[Any, Any, T]


class UpstreamHttp:
    """An httpx client for one service whose every answer is classified before it is returned."""

    def __init__(
        self,
        service: str,
        base_url: str,
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
        auth: httpx.Auth | None = None,
        error_message: ErrorMessage | None = None,
        credentials: str | None = None,
        outage: OutageRule | None = None,
    ) -> None:
        self.service = service
        self._judge = _Judge(service, error_message, credentials, outage)
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers, auth=auth)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; return the response when it is a success (2xx/3xx), else raise."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise transport_failure(self.service, method, path, exc) from exc
        self._judge(response)
        return response

    def send(self, request: Request) -> httpx.Response:
        """Send a flow's :class:`Request` (see :meth:`request`)."""
        return self.request(request.method, request.url, **_arguments(request))

    def close(self) -> None:
        self._http.close()


class AsyncUpstreamHttp:
    """:class:`UpstreamHttp` on ``httpx.AsyncClient``: the same classification, awaited."""

    def __init__(
        self,
        service: str,
        base_url: str,
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
        error_message: ErrorMessage | None = None,
        credentials: str | None = None,
        outage: OutageRule | None = None,
    ) -> None:
        self.service = service
        self._judge = _Judge(service, error_message, credentials, outage)
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; return the response when it is a success (2xx/3xx), else raise."""
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise transport_failure(self.service, method, path, exc) from exc
        self._judge(response)
        return response

    async def send(self, request: Request) -> httpx.Response:
        """Send a flow's :class:`Request` (see :meth:`request`)."""
        return await self.request(request.method, request.url, **_arguments(request))

    async def aclose(self) -> None:
        await self._http.aclose()


def drive(
    flow: Flow[T],
    send: Callable[[Request], httpx.Response],
    perform: Callable[[Any], Any] | None = None,
) -> T:
    """Run ``flow`` to its result: each :class:`Request` through ``send``, each :class:`Pause`
    with ``time.sleep``, any other step through ``perform``. An exception a step raises is
    raised into the flow at that step, so the flow's own ``try`` blocks decide as plain code
    would."""
    try:
        step = next(flow)
        while True:
            try:
                if isinstance(step, Request):
                    answer: Any = send(step)
                elif isinstance(step, Pause):
                    answer = time.sleep(step.seconds)
                else:
                    answer = _perform(perform, step)
            except Exception as exc:  # noqa: BLE001 - raised into the flow, which decides
                step = flow.throw(exc)
            else:
                step = flow.send(answer)
    except StopIteration as stop:
        return stop.value
    finally:
        flow.close()


async def drive_async(
    flow: Flow[T],
    send: Callable[[Request], Awaitable[httpx.Response]],
    perform: Callable[[Any], Awaitable[Any]] | None = None,
) -> T:
    """:func:`drive` for the async clients: requests, pauses and steps are awaited."""
    try:
        step = next(flow)
        while True:
            try:
                if isinstance(step, Request):
                    answer: Any = await send(step)
                elif isinstance(step, Pause):
                    answer = await asyncio.sleep(step.seconds)
                else:
                    answer = await _perform(perform, step)
            except Exception as exc:  # noqa: BLE001 - raised into the flow, which decides
                step = flow.throw(exc)
            else:
                step = flow.send(answer)
    except StopIteration as stop:
        return stop.value
    finally:
        flow.close()


def _perform(perform: Callable[[Any], Any] | None, step: Any) -> Any:
    if perform is None:
        raise TypeError(f"no way to perform the step {step!r}")
    return perform(step)


def _arguments(request: Request) -> dict[str, Any]:
    """The httpx keyword arguments of ``request`` (those it sets)."""
    arguments = {
        "params": request.params,
        "headers": request.headers,
        "json": request.json,
        "data": request.data,
        "timeout": request.timeout,
    }
    return {name: value for name, value in arguments.items() if value is not None}


def transport_failure(
    service: str, method: str, path: str, exc: httpx.TransportError
) -> ServiceUnavailableError:
    """The service failure a connection error or timeout of ``method path`` is."""
    if isinstance(exc, httpx.TimeoutException):
        return ServiceUnavailableError(service, f"{method} {path} timed out")
    return ServiceUnavailableError(service, f"{method} {path} failed: {type(exc).__name__}: {exc}")


def raise_for_status(
    service: str,
    response: httpx.Response,
    error_message: ErrorMessage | None = None,
    credentials: str | None = None,
    outage: OutageRule | None = None,
) -> None:
    """Raise the error that ``response``'s status means; do nothing for a success.

    The message quotes the service's own words: ``error_message(response)`` when given and it
    finds them, else the start of the body; after an empty body, the status line
    (``answered 401 Unauthorized``), never nothing. With ``credentials`` (the variable holding
    the client's credentials), a 401 is :class:`UnauthorizedError`: the settings are wrong.
    An answer ``outage`` recognises is a :class:`ServiceOutage`, whatever its status.
    """
    status = response.status_code
    if status < 400:
        return
    said = (error_message(response) if error_message is not None else None) or _excerpt(response)
    where = _where(response)
    detail = f"{where} answered {status}: {said}" if said else f"{where} {status_line(response)}"
    if status == 401 and credentials is not None:
        raise UnauthorizedError(service, detail, variable=credentials, status=status)
    reason = outage(response, said) if outage is not None else None
    if reason is not None:
        raise ServiceOutage(
            service,
            detail,
            outage=reason,
            status=status,
            retry_after=retry_after_seconds(response),
            opens_at_once=True,
        )
    if status in SERVICE_SIDE_4XX or status >= 500:
        raise ServiceUnavailableError(
            service, detail, status=status, retry_after=retry_after_seconds(response)
        )
    if status == 404:
        raise NotFoundError(service, detail, status=status)
    raise UpstreamRequestError(service, detail, status=status)


@dataclass(frozen=True)
class _Judge:
    """One client's reading of error answers: :func:`raise_for_status` with its options."""

    service: str
    error_message: ErrorMessage | None
    credentials: str | None
    outage: OutageRule | None

    def __call__(self, response: httpx.Response) -> None:
        raise_for_status(self.service, response, self.error_message, self.credentials, self.outage)


def json_body(
    service: str, response: httpx.Response, parse: Callable[[Any], T] | None = None
) -> Any:
    """The decoded JSON of a success, read by ``parse`` when given.

    A body that is not JSON, or JSON of a shape ``parse`` cannot read (it raises ``KeyError``,
    ``TypeError``, ``ValueError`` or ``AttributeError``), is the service misbehaving: a
    :class:`ServiceUnavailableError`, counted by its breaker, with the same classification in
    every client. The message names the request, the content type and the size, never the
    body (it may hold a token).
    """
    try:
        data = response.json()
    except ValueError:
        kind = response.headers.get("Content-Type", "no content type")
        raise ServiceUnavailableError(
            service,
            f"{_where(response)} answered {response.status_code} with a body that is not JSON "
            f"({kind}, {len(response.content)} bytes)",
            status=response.status_code,
        ) from None
    if parse is None:
        return data
    try:
        return parse(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ServiceUnavailableError(
            service,
            f"{_where(response)} answered {response.status_code} with JSON of an unexpected "
            f"shape: {type(exc).__name__}: {exc}",
            status=response.status_code,
        ) from None


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), if usable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds <= 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


def status_line(response: httpx.Response) -> str:
    """``answered 401 Unauthorized``: the status and its phrase (the phrase when known)."""
    phrase = response.reason_phrase
    return f"answered {response.status_code}" + (f" {phrase}" if phrase else "")


def _where(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url.path}"


def _excerpt(response: httpx.Response, limit: int = 200) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "")
