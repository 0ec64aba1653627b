"""``OperatorServer``: the web application served by uvicorn, in the foreground or from a thread.

The listening socket is opened when the server is built, so a port already in use is an
``OSError`` before anything runs, and port 0 picks a free one (``url`` names it). Stopping sets
an event that ends the page's live streams within a second, then lets uvicorn finish.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Any

import uvicorn

from soulspot_jobs.operate.web.app import create_app

if TYPE_CHECKING:
    from soulspot_jobs.jobs.app import SoulspotJobs

#: Default address of ``soulspot-jobs serve``: this machine only.
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
#: Seconds uvicorn waits for open requests when stopping.
GRACEFUL_SHUTDOWN = 3


class OperatorServer:
    """Serves the page, ``/health`` and ``/metrics`` of ``app`` on ``(host, port)``."""

    def __init__(self, app: SoulspotJobs, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
        self.app = app
        self.stopping = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=128)
        self.server_address = self.socket.getsockname()[:2]
        config = uvicorn.Config(
            create_app(app, stopping=self.stopping),
            log_config=None,
            access_log=False,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        )
        self._server = _Uvicorn(config, self.stopping)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until SIGINT or SIGTERM (in the main thread) or :meth:`stop`."""
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self) -> threading.Thread:
        """Serve from a background thread (tests, embedding); stop with :meth:`stop`.

        The socket already listens, so a request made at once waits in its backlog until
        uvicorn has started, and is answered."""
        self._thread = threading.Thread(target=self.serve_forever, name="soulspot-web", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._server.handle_exit(0, None)
        if self._thread is not None:
            self._thread.join(GRACEFUL_SHUTDOWN + 5)
            self._thread = None


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, which also ends the page's live streams when told to exit."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self._stopping = stopping

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._stopping.set()
        super().handle_exit(sig, frame)
