"""The machinery every fake upstream shares: a threaded HTTP server on loopback, a router, and
fault controls.

Fault controls, from Python (``server.faults``) or over HTTP (``POST /_faults/<name>`` with a
JSON body):

* ``outage`` ``{"seconds": 5, "mode": "refuse" | "503"}``: refuse connections (the listening
  socket is closed, then reopened on the same port) or answer 503 for that long;
* ``fail`` ``{"count": 3, "status": 500}``: the next ``count`` requests get ``status``;
* ``rate_limit`` ``{"count": 2, "retry_after": 4}``: the next ``count`` requests get 429 with
  ``Retry-After``;
* ``latency`` ``{"seconds": 0.2}``: every answer is delayed that long;
* ``bad_body`` ``{"count": 1, "kind": "html" | "truncated"}``: the next ``count`` successes
  with a JSON body come as 200 with an HTML page (as from a proxy) or their JSON cut in half;
* ``clear`` ``{}``: back to healthy.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: Path prefix of the fault-control endpoints.
FAULTS_PATH = "/_faults/"
#: What a proxy in front of a service answers when the service behind it misbehaves.
PROXY_PAGE = "<html><head><title>Bad Gateway</title></head><body>upstream error</body></html>"


@dataclass
class Request:
    """One request as a route handler sees it."""

    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Response:
    """What a route handler answers: a status, a JSON body (or raw text) and headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    #: Content type of ``text`` (default plain text).
    content_type: str | None = None


Handler = Callable[[Request], Response]


class Faults:
    """Thread-safe fault switches of one fake server."""

    def __init__(
        self,
        on_refuse: Callable[[float], None],
        error_body: Callable[[int, str], Any] = lambda status, message: {"error": message},
    ) -> None:
        self._lock = threading.Lock()
        self._on_refuse = on_refuse
        #: The body of a fault's answer in the service's own error shape, from status and text.
        self._error_body = error_body
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self.unavailable_until = 0.0
            self.failures_left = 0
            self.failure_status = 500
            self.rate_limited_left = 0
            self.retry_after = 1.0
            self.latency = 0.0
            self.bad_bodies_left = 0
            self.bad_body_kind = "html"

    def outage(self, seconds: float, mode: str = "503") -> None:
        """Be down for ``seconds``: refuse connections (``"refuse"``) or answer 503."""
        if mode == "refuse":
            self._on_refuse(seconds)
            return
        if mode != "503":
            raise ValueError(f"unknown outage mode {mode!r}: use 'refuse' or '503'")
        with self._lock:
            self.unavailable_until = time.monotonic() + seconds

    def fail(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` requests with ``status``."""
        with self._lock:
            self.failures_left, self.failure_status = count, status

    def rate_limit(self, count: int, retry_after: float) -> None:
        """Answer the next ``count`` requests 429 with ``Retry-After: retry_after``."""
        with self._lock:
            self.rate_limited_left, self.retry_after = count, retry_after

    def set_latency(self, seconds: float) -> None:
        with self._lock:
            self.latency = seconds

    def bad_body(self, count: int, kind: str = "html") -> None:
        """Spoil the body of the next ``count`` JSON successes: ``"html"`` or ``"truncated"``."""
        if kind not in ("html", "truncated"):
            raise ValueError(f"unknown bad body {kind!r}: use 'html' or 'truncated'")
        with self._lock:
            self.bad_bodies_left, self.bad_body_kind = count, kind

    def spoil(self, response: Response) -> Response:
        """``response``, or in its place a body that is not its JSON while ``bad_body`` lasts."""
        if not 200 <= response.status < 300 or response.body is None:
            return response
        with self._lock:
            if self.bad_bodies_left <= 0:
                return response
            self.bad_bodies_left -= 1
            kind = self.bad_body_kind
        if kind == "html":
            return Response(200, text=PROXY_PAGE, content_type="text/html; charset=utf-8")
        payload = json.dumps(response.body)
        return Response(200, text=payload[: len(payload) // 2], content_type="application/json")

    def intercept(self) -> Response | None:
        """The fault answer for the next request, if a fault applies (consumes counted ones)."""
        with self._lock:
            latency = self.latency
            if time.monotonic() < self.unavailable_until:
                answer = Response(503, self._error_body(503, "Service Unavailable"))
            elif self.failures_left > 0:
                self.failures_left -= 1
                status = self.failure_status
                answer = Response(status, self._error_body(status, "injected failure"))
            elif self.rate_limited_left > 0:
                self.rate_limited_left -= 1
                retry_after = f"{self.retry_after:g}"
                body = self._error_body(429, "Too Many Requests")
                answer = Response(429, body, {"Retry-After": retry_after})
            else:
                answer = None
        if latency:
            time.sleep(latency)
        return answer


class FakeServer:
    """A fake upstream on ``127.0.0.1`` and a free port; subclasses add routes in ``__init__``."""

    def __init__(self, *, port: int = 0) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self.faults = Faults(self._refuse_for, self.error_body)
        #: Every request received (method, path), in order; for tests and the demo.
        self.requests: list[tuple[str, str]] = []
        #: When each of ``requests`` arrived (``time.monotonic()``), same order.
        self.request_times: list[float] = []

    def error_body(self, status: int, message: str) -> Any:
        """The body of an error answer in the service's shape; fakes of other shapes override."""
        return {"error": message}

    # -- routes ----------------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """Serve ``method`` requests whose path matches ``pattern`` (``{name}`` = one segment)."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method, re.compile(f"^{regex}$"), handler))

    def dispatch(self, request: Request) -> Response:
        if request.path.startswith(FAULTS_PATH):
            return self._control(request)
        self.requests.append((request.method, request.path))
        self.request_times.append(time.monotonic())
        faulted = self.faults.intercept()
        if faulted is not None:
            return faulted
        for method, regex, handler in self._routes:
            match = regex.match(request.path)
            if match and method == request.method:
                request.params = match.groupdict()
                return self.faults.spoil(handler(request))
        return Response(404, {"error": f"no route for {request.method} {request.path}"})

    # -- life cycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> FakeServer:
        self._stopped = False
        self._listen()
        return self

    def stop(self) -> None:
        self._stopped = True
        self._close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self) -> None:
        with self._lock:
            if self._httpd is not None or self._stopped:
                return
            httpd = _Server(("127.0.0.1", self._port), _handler_for(self))
            self._port = httpd.server_address[1]
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()

    def _close(self) -> None:
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join()

    def _refuse_for(self, seconds: float) -> None:
        """Close the listening socket (connections are refused) and reopen it after ``seconds``."""
        threading.Thread(target=self._close, daemon=True).start()
        timer = threading.Timer(seconds, self._listen)
        timer.daemon = True
        timer.start()

    def _control(self, request: Request) -> Response:
        name = request.path[len(FAULTS_PATH) :]
        options = request.json() or {}
        try:
            if name == "outage":
                self.faults.outage(float(options["seconds"]), options.get("mode", "503"))
            elif name == "fail":
                self.faults.fail(int(options["count"]), int(options.get("status", 500)))
            elif name == "rate_limit":
                self.faults.rate_limit(int(options["count"]), float(options["retry_after"]))
            elif name == "latency":
                self.faults.set_latency(float(options["seconds"]))
            elif name == "bad_body":
                self.faults.bad_body(int(options["count"]), str(options.get("kind", "html")))
            elif name == "clear":
                self.faults.clear()
            else:
                return Response(404, {"error": f"unknown fault {name!r}"})
        except (KeyError, TypeError, ValueError) as exc:
            return Response(400, {"error": f"bad fault options: {exc}"})
        return Response(204)


class _Server(ThreadingHTTPServer):
    #: Listen backlog: a burst of concurrent workers must not wait for a SYN retry.
    request_queue_size = 128
    daemon_threads = True


def _handler_for(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        #: One request per connection, so an outage in "refuse" mode refuses every request
        #: (a kept-alive connection would outlive the closed listening socket).
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the fakes' access log would drown the test output."""

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                method=self.command,
                path=parts.path,
                params={},
                query={k: v[-1] for k, v in parse_qs(parts.query).items()},
                headers={k.lower(): v for k, v in self.headers.items()},
                body=self.rfile.read(length) if length else b"",
            )
            response = server.dispatch(request)
            if response.text is not None:
                payload = response.text.encode()
                content_type = response.content_type or "text/plain; charset=utf-8"
            elif response.body is None:
                payload, content_type = b"", "application/json"
            else:
                payload, content_type = json.dumps(response.body).encode(), "application/json"
            self.send_response(response.status, HTTPStatus(response.status).phrase)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.status != 204:
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload and response.status != 204:
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return Handler
