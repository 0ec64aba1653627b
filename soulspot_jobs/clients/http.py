"""What every upstream client shares: an httpx client and one classification of answers.

Connection errors, timeouts, 5xx, 429 and 503 are failures of the service
(:class:`ServiceUnavailableError`, counted by its breaker; a ``Retry-After`` travels with it).
Other 4xx are the job's own errors (:class:`UpstreamRequestError`, :class:`NotFoundError`),
never counted. The translation happens here, once, for all three clients.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from soulspot_jobs.errors import NotFoundError, ServiceUnavailableError, UpstreamRequestError

#: Longest ``Retry-After`` honoured, in seconds (a broken header must not stall a service a day).
MAX_RETRY_AFTER = 3600.0


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
    ) -> None:
        self.service = service
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers, auth=auth)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; return the response when it is a success (2xx/3xx), else raise."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ServiceUnavailableError(self.service, f"{method} {path} timed out") from exc
        except httpx.TransportError as exc:
            raise ServiceUnavailableError(
                self.service, f"{method} {path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        raise_for_status(self.service, response)
        return response

    def close(self) -> None:
        self._http.close()


def raise_for_status(service: str, response: httpx.Response) -> None:
    """Raise the error that ``response``'s status means; do nothing for a success."""
    status = response.status_code
    if status < 400:
        return
    where = f"{response.request.method} {response.request.url.path}"
    detail = f"{where} answered {status}: {_excerpt(response)}"
    if status == 429 or status >= 500:
        raise ServiceUnavailableError(
            service, detail, status=status, retry_after=retry_after_seconds(response)
        )
    if status == 404:
        raise NotFoundError(service, detail, status=status)
    raise UpstreamRequestError(service, detail, status=status)


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


def _excerpt(response: httpx.Response, limit: int = 200) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "")
