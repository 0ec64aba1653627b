"""The sans-I/O drivers: one flow, run by ``drive`` and ``drive_async``, gives the same result and
the same errors; errors are raised into the flow where it yielded. Canned answers here are only
for the drivers' mechanics; the clients themselves are tested against the fake servers."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from soulspot_jobs.clients.http import Flow, Pause, Request, drive, drive_async
from soulspot_jobs.errors import NotFoundError, ServiceUnavailableError


def answer(request: Request, status: int = 200, body: Any = None) -> httpx.Response:
    return httpx.Response(
        status, json=body, request=httpx.Request(request.method, f"http://x{request.url}")
    )


def lookup(name: str) -> Flow[str]:
    """A flow of two requests with a pause between them; a 404 of the first falls back."""
    try:
        first = yield Request("GET", f"/items/{name}")
        found = first.json()["id"]
    except NotFoundError:
        found = "fallback"
    yield Pause(0.0)
    second = yield Request("GET", f"/details/{found}")
    return f"{found}:{second.json()['detail']}"


def canned(missing: set[str], down: bool = False):
    """A ``send`` answering ``/items/<name>`` (404 for ``missing``) and ``/details/<id>``."""
    sent: list[str] = []

    def send(request: Request) -> httpx.Response:
        sent.append(request.url)
        if down:
            raise ServiceUnavailableError("test-api", "refused")
        kind, _, name = request.url.strip("/").partition("/")
        if kind == "items":
            if name in missing:
                raise NotFoundError("test-api", "no such item", status=404)
            return answer(request, body={"id": name.upper()})
        return answer(request, body={"detail": f"about {name}"})

    async def send_async(request: Request) -> httpx.Response:
        await asyncio.sleep(0)
        return send(request)

    return send, send_async, sent


@pytest.mark.parametrize("missing", [set(), {"abba"}], ids=["found", "fallback"])
async def test_both_drivers_run_one_flow_to_the_same_result(missing: set[str]) -> None:
    # Given the same canned service for each form
    send, _, sent_sync = canned(missing)
    _, send_async, sent_async = canned(missing)

    # When each driver runs the flow
    result = drive(lookup("abba"), send)
    result_async = await drive_async(lookup("abba"), send_async)

    # Then both sent the same requests and returned the same result (the 404 handled inside)
    assert result == result_async
    assert sent_sync == sent_async
    assert result == ("fallback:about fallback" if missing else "ABBA:about ABBA")


async def test_an_error_the_flow_does_not_handle_reaches_the_caller_in_both_forms() -> None:
    send, send_async, _ = canned(set(), down=True)
    with pytest.raises(ServiceUnavailableError, match="refused"):
        drive(lookup("abba"), send)
    with pytest.raises(ServiceUnavailableError, match="refused"):
        await drive_async(lookup("abba"), send_async)


def test_a_step_no_one_can_perform_is_a_clear_error() -> None:
    def flow() -> Flow[None]:
        yield "a rate-limit slot"

    with pytest.raises(TypeError, match="no way to perform the step 'a rate-limit slot'"):
        drive(flow(), lambda request: answer(request))
