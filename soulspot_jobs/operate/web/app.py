"""The operators' web application (Starlette): the page at ``/``, its live updates, its actions,
and the machine endpoints ``/health`` and ``/metrics``.

- ``GET /`` renders the whole page from one :class:`~.snapshot.Snapshot`; it works without
  JavaScript. ``?state=failed`` lists only the jobs in that state.
- ``GET /events`` is a server-sent event stream: every :data:`REFRESH` seconds the page's sections
  are rendered again and the ones that changed are sent (``static/page.js`` swaps them in and
  counts ``retry_after`` down between updates).
- ``POST /login`` and ``POST /logout`` sign a browser in and out (see :mod:`.admin`).
- ``POST /actions/<kind>/<target>/<verb>`` runs one of :data:`~.actions.ACTIONS`. A browser is
  sent back to the page (303) with the outcome shown at the top; a script that asks for JSON
  (``Accept: application/json``, or any ``Authorization`` header) gets
  ``{"ok": ..., "message": ...}`` and the status code.
- ``GET /health`` and ``GET /metrics`` serve the health document (200, or 503 while a breaker is
  OPEN or Redis cannot be read) and the Prometheus text, as before; ``HEAD`` answers both.

Every request reads Redis afresh, so any number of ``serve`` processes answer the same.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio
import redis
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from soulspot_jobs.circuit_breaker import BackendUnavailableError
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.operate.health import UNAVAILABLE_STATUS, http_status, read_health
from soulspot_jobs.operate.metrics import registry_for
from soulspot_jobs.operate.web import views
from soulspot_jobs.operate.web.actions import ACTIONS, ActionFailed
from soulspot_jobs.operate.web.admin import (
    CSRF_FIELD,
    READ_ONLY,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Admin,
    Refused,
    same_origin,
)
from soulspot_jobs.operate.web.snapshot import take_snapshot

if TYPE_CHECKING:
    from soulspot_jobs.jobs.app import SoulspotJobs

log = structlog.get_logger("soulspot_jobs.web")

#: Seconds between two looks at Redis for a page's live updates.
REFRESH = 1.0
#: Cookie carrying the outcome of the last action to the page it redirects to.
FLASH_COOKIE = "soulspot_flash"
#: Errors that mean Redis could not be read during a request.
STORE_ERRORS = (redis.RedisError, BackendUnavailableError)
#: Headers of every HTML page: nothing but the page's own files, never inside a frame.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def create_app(jobs: SoulspotJobs, *, stopping: threading.Event | None = None) -> Starlette:
    """The web application of ``jobs``; ``stopping``, once set, ends the live streams.

    sse-starlette's own drain on shutdown sets one flag for the whole process, so that a server
    stopped once would end every later server's streams; the streams here end on ``stopping``.
    """
    AppStatus.disable_automatic_graceful_drain()
    web = _Web(jobs, stopping or threading.Event())
    package = resources.files("soulspot_jobs.operate.web")
    return Starlette(
        routes=[
            Route("/", web.page, methods=["GET"]),
            Route("/events", web.events, methods=["GET"]),
            Route("/health", web.health, methods=["GET"]),
            Route("/metrics", web.metrics, methods=["GET"]),
            Route("/login", web.login, methods=["POST"]),
            Route("/logout", web.logout, methods=["POST"]),
            Route("/actions/{kind}/{target}/{verb}", web.act, methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(package / "static")), name="static"),
        ],
        exception_handlers={404: _not_found},
    )


class _Web:
    """The request handlers, sharing the application, its templates and its admin."""

    def __init__(self, jobs: SoulspotJobs, stopping: threading.Event) -> None:
        self.jobs = jobs
        self.stopping = stopping
        self.admin = Admin(jobs.settings.admin_token.get_secret_value())
        self.registry = registry_for(jobs)
        directory = resources.files("soulspot_jobs.operate.web") / "templates"
        self.templates = Jinja2Templates(directory=str(directory))
        views.install_filters(self.templates.env)

    # -- the page --------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        state = _state_filter(request)
        snapshot = await anyio.to_thread.run_sync(take_snapshot, self.jobs, state)
        context = self._context(request, snapshot, state)
        context["flash"] = request.cookies.get(FLASH_COOKIE)
        response = self.templates.TemplateResponse(
            request, "page.html", context, headers=PAGE_HEADERS
        )
        if context["flash"]:
            response.delete_cookie(FLASH_COOKIE, path="/")
        return response

    async def events(self, request: Request) -> Response:
        state = _state_filter(request)
        return EventSourceResponse(self._updates(request, state), ping=15, send_timeout=10)

    async def _updates(self, request: Request, state: JobState | None) -> AsyncIterator[Any]:
        """The sections that changed since the last look, every :data:`REFRESH` seconds."""
        sent: dict[str, str] = {}
        while not self.stopping.is_set():
            snapshot = await anyio.to_thread.run_sync(take_snapshot, self.jobs, state)
            context = self._context(request, snapshot, state)
            changed = {}
            for section in views.SECTIONS:
                html = self.templates.get_template(f"_{section}.html").render(context)
                if sent.get(section) != html:
                    changed[section] = sent[section] = html
            yield ServerSentEvent(
                data=json.dumps({"taken_at": snapshot.taken_at, "sections": changed}),
                event="sections",
            )
            with anyio.move_on_after(REFRESH):
                while not self.stopping.is_set():
                    await anyio.sleep(0.1)
            if await request.is_disconnected():
                return

    def _context(self, request: Request, snapshot: Any, state: JobState | None) -> dict[str, Any]:
        can_act = self.admin.signed_in(request)
        return {
            "request": request,
            "snapshot": snapshot,
            "state_filter": state.value if state else None,
            "job_states": [s.value for s in JobState],
            "sections": views.SECTIONS,
            "admin_enabled": self.admin.enabled,
            "can_act": can_act,
            "csrf_field": CSRF_FIELD,
            "csrf_token": self.admin.csrf() if can_act else "",
        }

    # -- signing in and acting -------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        form = await request.form()
        presented = str(form.get("token") or "")
        if not self.admin.enabled:
            return self._outcome(request, 403, READ_ONLY)
        if not same_origin(request):
            return self._outcome(request, 403, "the request came from another site")
        if not self.admin.accepts_token(presented):
            log.warning("Wrong admin token presented", event_name="web.login_refused")
            return self._outcome(request, 401, "wrong admin token")
        response = self._outcome(request, 200, "Signed in: actions are enabled.")
        response.set_cookie(
            SESSION_COOKIE,
            self.admin.session(),
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = self._outcome(request, 200, "Signed out.")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def act(self, request: Request) -> Response:
        kind, target, verb = (request.path_params[k] for k in ("kind", "target", "verb"))
        action = ACTIONS.get((kind, verb))
        if action is None:
            return self._outcome(request, 404, f"no action {verb!r} on {kind!r}")
        form = {key: str(value) for key, value in (await request.form()).items()}
        try:
            self.admin.check(request, form.get(CSRF_FIELD))
            message = await anyio.to_thread.run_sync(action, self.jobs, target, form)
        except Refused as refused:
            log.warning(
                f"Action refused: {refused.message}",
                event_name="web.action_refused",
                action=f"{kind}.{verb}",
                target=target,
            )
            return self._outcome(request, refused.status, refused.message)
        except ActionFailed as failed:
            return self._outcome(request, failed.status, failed.message)
        except STORE_ERRORS as exc:
            return self._outcome(request, UNAVAILABLE_STATUS, f"Redis failed: {exc}")
        log.info(message, event_name="web.action", action=f"{kind}.{verb}", target=target)
        return self._outcome(request, 200, message)

    def _outcome(self, request: Request, status: int, message: str) -> Response:
        """JSON with ``status`` for a script. A browser goes back to the page with ``message``
        shown at its top when the action was done, and gets a page of ``status`` saying why
        when it was not."""
        if _wants_json(request):
            return JSONResponse({"ok": status < 400, "message": message}, status_code=status)
        if status >= 400:
            said = ("refused: " if status in (401, 403) else "failed: ") + message
            return self.templates.TemplateResponse(
                request, "outcome.html", {"flash": said}, status_code=status, headers=PAGE_HEADERS
            )
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            FLASH_COOKIE, message, max_age=60, path="/", httponly=True, samesite="strict"
        )
        return response

    # -- the machine endpoints -------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        try:
            document = await anyio.to_thread.run_sync(
                read_health, self.jobs.breakers, self.jobs.deferred
            )
        except STORE_ERRORS as exc:
            log.error("Redis could not be read", event_name="web.store_error", error=str(exc))
            return JSONResponse(
                {"status": "unavailable", "error": str(exc)}, status_code=UNAVAILABLE_STATUS
            )
        return JSONResponse(document, status_code=http_status(document))

    async def metrics(self, request: Request) -> Response:
        try:
            body = await anyio.to_thread.run_sync(generate_latest, self.registry)
        except STORE_ERRORS as exc:
            log.error("Redis could not be read", event_name="web.store_error", error=str(exc))
            return JSONResponse(
                {"status": "unavailable", "error": str(exc)}, status_code=UNAVAILABLE_STATUS
            )
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def _state_filter(request: Request) -> JobState | None:
    value = request.query_params.get("state")
    try:
        return JobState(value) if value else None
    except ValueError:
        return None


def _wants_json(request: Request) -> bool:
    return "authorization" in request.headers or "application/json" in request.headers.get(
        "accept", ""
    )


async def _not_found(request: Request, exc: Exception) -> Response:
    path = request.url.path
    if "text/html" in request.headers.get("accept", ""):
        return PlainTextResponse(f"no such page {path!r}: try /", status_code=404)
    return JSONResponse(
        {"error": f"no such endpoint {path!r}: try /, /health or /metrics"}, status_code=404
    )
