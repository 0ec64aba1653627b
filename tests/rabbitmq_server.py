"""A throwaway real RabbitMQ node on loopback, for the tests and the benchmarks.

It runs the ``rabbitmq-server`` of the machine (Debian's package installs it under
``/usr/lib/rabbitmq/bin``) as a node of its own: its own node name, a free AMQP port and a free
distribution port, bound to 127.0.0.1, with no plugins, and its data and logs in a temporary
directory deleted on ``stop()``. The Erlang port mapper (``epmd``) it may start listens on
127.0.0.1 only and outlives the node, as epmd does.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from soulspot_jobs.embedded.server import _free_port
from soulspot_jobs.errors import SoulspotJobsError

#: Seconds to wait for a started node to accept AMQP connections (a cold Erlang VM is slow).
STARTUP_TIMEOUT = 60.0
#: Seconds to wait for the node to exit after SIGTERM, then after SIGKILL.
STOP_TIMEOUT = 15.0
#: Lines of the node's output quoted in a startup error.
LOG_TAIL_LINES = 20
#: Where Debian's package puts the script that runs a node as the calling user.
_DEBIAN_SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmq-server"
#: Seconds between two connection attempts while waiting for the node.
_POLL_INTERVAL = 0.25


class RabbitMQServerError(SoulspotJobsError):
    """``rabbitmq-server`` cannot be found or did not start."""


def find_rabbitmq_server() -> str:
    """Path of the script that starts a node as the calling user; raises if there is none."""
    if os.access(_DEBIAN_SCRIPT, os.X_OK):
        return _DEBIAN_SCRIPT
    on_path = shutil.which("rabbitmq-server")
    if on_path:
        return on_path
    raise RabbitMQServerError(
        "no rabbitmq-server found: install it (Debian: apt-get install rabbitmq-server)"
    )


class EmbeddedRabbitMQ:
    """A private RabbitMQ node, used as a context manager; ``url`` is its ``amqp://`` URL."""

    def __init__(
        self, *, executable: str | None = None, startup_timeout: float = STARTUP_TIMEOUT
    ) -> None:
        self.executable = executable
        self.startup_timeout = startup_timeout
        self.node_name = f"soulspot-{uuid.uuid4().hex[:8]}@localhost"
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._port: int | None = None
        self._owner_pid: int | None = None

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/%2F`` (the guest user may log in on loopback)."""
        if self._process is None:
            raise RabbitMQServerError("the RabbitMQ node is not running")
        return f"amqp://guest:guest@127.0.0.1:{self._port}/%2F"

    def start(self) -> EmbeddedRabbitMQ:
        """Start the node and return once it accepts an AMQP connection."""
        if self._process is not None:
            return self
        executable = self.executable or find_rabbitmq_server()
        self._dir = Path(tempfile.mkdtemp(prefix="soulspot-rabbitmq-"))
        self._port = _free_port()
        (self._dir / "enabled_plugins").write_text("[].\n")
        env = {
            **os.environ,
            "HOME": str(self._dir),  # the Erlang cookie is written here
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self._port),
            "RABBITMQ_DIST_PORT": str(_free_port()),
            "RABBITMQ_MNESIA_BASE": str(self._dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self._dir / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self._dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self._dir / "rabbitmq"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        with open(self._dir / "node.log", "wb") as log:
            self._process = subprocess.Popen(
                [executable],
                env=env,
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._owner_pid = os.getpid()
        _running.add(self)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the node (SIGTERM to its process group, then SIGKILL); delete its directory."""
        if self._owner_pid is not None and self._owner_pid != os.getpid():
            return
        _running.discard(self)
        process, self._process = self._process, None
        if process is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=STOP_TIMEOUT)
                    break
        self._owner_pid = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EmbeddedRabbitMQ:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_until_ready(self) -> None:
        import pika
        import pika.exceptions

        assert self._process is not None
        parameters = pika.URLParameters(self.url)
        parameters.connection_attempts = 1
        parameters.socket_timeout = 2
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RabbitMQServerError(
                    f"rabbitmq-server exited with code {self._process.returncode} on startup; "
                    f"last lines of its output:\n{self._log_tail()}"
                )
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                pika.BlockingConnection(parameters).close()
                return
            time.sleep(_POLL_INTERVAL)
        raise RabbitMQServerError(
            f"rabbitmq-server did not accept connections within {self.startup_timeout} s; "
            f"last lines of its output:\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        assert self._dir is not None
        try:
            lines = (self._dir / "node.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no output)"
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(no output)"


#: Nodes started by this process and not stopped yet, stopped at interpreter exit.
_running: set[EmbeddedRabbitMQ] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()
