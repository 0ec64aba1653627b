"""The operators' HTTP endpoints: ``GET /health`` (the health document) and ``GET /metrics``.

A stdlib :class:`~http.server.ThreadingHTTPServer`; every request reads Redis afresh, so any
number of these servers, anywhere, answer the same. ``/health`` answers 200 while no breaker is
OPEN and 503 while one is; when Redis itself cannot be read it answers 503 with
``{"status": "unavailable", "error": ...}``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import redis
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from soulspot_jobs.circuit_breaker import BackendUnavailableError
from soulspot_jobs.operate.health import UNAVAILABLE_STATUS, http_status, read_health
from soulspot_jobs.operate.metrics import registry_for

if TYPE_CHECKING:
    from soulspot_jobs.jobs.app import SoulspotJobs

log = structlog.get_logger("soulspot_jobs.web")

#: Default address of ``soulspot-jobs serve``.
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
#: Errors that mean Redis could not be read during a request.
_STORE_ERRORS = (redis.RedisError, BackendUnavailableError)


class OperatorServer(ThreadingHTTPServer):
    """Serves ``/health`` and ``/metrics`` for ``app`` on ``(host, port)`` (port 0: a free one)."""

    daemon_threads = True

    def __init__(self, app: SoulspotJobs, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
        self.app = app
        self.registry = registry_for(app)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> threading.Thread:
        """Serve from a background thread (tests, embedding); stop with :meth:`stop`."""
        thread = threading.Thread(target=self.serve_forever, name="soulspot-web", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: OperatorServer

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        try:
            if path == "/health":
                document = read_health(self.server.app.breakers, self.server.app.deferred)
                self._json(http_status(document), document)
            elif path == "/metrics":
                body = generate_latest(self.server.registry)
                self._send(200, CONTENT_TYPE_LATEST, body)
            else:
                self._json(404, {"error": f"no such endpoint {path!r}: try /health or /metrics"})
        except _STORE_ERRORS as exc:
            log.error("Redis could not be read", event_name="web.store_error", error=str(exc))
            self._json(UNAVAILABLE_STATUS, {"status": "unavailable", "error": str(exc)})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug(format % args, event_name="web.request")

    def _json(self, status: int, document: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(document).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
