"""The small daemon that runs the shared redis-server and stops it when its last user is gone.

The first process that needs the server starts ``python -m soulspot_jobs.embedded.supervisor
DATA_DIR``. The supervisor leaves its starter behind (a second fork in a session of its own), so
the server outlives whoever happened to start it. It runs redis-server as its child with the
append-only file on (``appendfsync everysec``: a write acknowledged to a client is in the file,
at worst one second from the disk), records it in ``redis.json`` once it answers PING, and
then looks at the users every ``POLL_INTERVAL`` seconds: when none is alive any more, it shuts
the server down (SHUTDOWN flushes the append-only file) and exits. When the server dies while
users are alive (``kill -9``, the kernel's out-of-memory killer), it starts it again on the same
socket from its append-only file, within a second; a server that died ``MAX_RESTARTS`` times
in ``RESTART_WINDOW`` seconds is left down. If the supervisor itself is
killed, the kernel sends redis-server SIGTERM (parent-death signal), which also shuts it down
cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

import redis

from soulspot_jobs.embedded.control import (
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    client_for,
    shutdown_server,
)
from soulspot_jobs.embedded.layout import DataDir, ServerState
from soulspot_jobs.embedded.processes import start_time
from soulspot_jobs.embedded.server import die_with_parent, find_redis_server
from soulspot_jobs.embedded.users import Users

#: Seconds between two looks at the users (how long the server outlives its last user).
POLL_INTERVAL = 0.25
#: Most restarts of a redis-server that died under its users within RESTART_WINDOW seconds.
MAX_RESTARTS, RESTART_WINDOW = 5, 60.0
#: Seconds between two PINGs while the server starts.
_PING_INTERVAL = 0.02


def redis_command(executable: str, data: DataDir) -> list[str]:
    """redis-server's command line: unix socket only, append-only file in ``data.redis_dir``."""
    return [
        executable,
        "--port", "0",
        "--unixsocket", str(data.socket_path),
        "--unixsocketperm", "700",
        "--dir", str(data.redis_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "no",
        "--logfile", "",
    ]  # fmt: skip


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} supervisor[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


class _Stop(Exception):
    """Raised by the SIGTERM handler to leave the watch loop."""


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


class Supervisor:
    """Runs one redis-server for ``data`` until no user is left."""

    def __init__(self, data: DataDir, executable: str) -> None:
        self.data = data
        self.users = Users(data.users_dir)
        self.executable = executable
        self.process: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, _raise_stop)
        for ignored in (signal.SIGINT, signal.SIGHUP):
            signal.signal(ignored, signal.SIG_IGN)
        try:
            self.process = self._start()
            if self.process is None:
                return 1
            self._watch()
        except _Stop:
            _log("SIGTERM: stopping redis-server")
            self._stop()
        return 0

    def _start(self) -> subprocess.Popen[bytes] | None:
        socket_path = str(self.data.socket_path)
        process = subprocess.Popen(
            redis_command(self.executable, self.data),
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        error = self._wait_until_ready(process, socket_path)
        if error is not None:
            _log(error)
            with contextlib.suppress(OSError):
                process.kill()
                process.wait(STOP_TIMEOUT)
            self.data.write_state(
                ServerState(
                    status="failed",
                    supervisor_pid=os.getpid(),
                    supervisor_started=start_time(os.getpid()),
                    error=error,
                )
            )
            return None
        self.data.write_state(
            ServerState(
                status="ready",
                supervisor_pid=os.getpid(),
                supervisor_started=start_time(os.getpid()),
                pid=process.pid,
                pid_started=start_time(process.pid),
                socket=socket_path,
                started_at=time.time(),
            )
        )
        _log(f"redis-server pid {process.pid} ready on {socket_path}")
        return process

    def _wait_until_ready(self, process: subprocess.Popen[bytes], socket_path: str) -> str | None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        client = client_for(socket_path)
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    return f"redis-server exited with code {process.returncode} on startup"
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        return None
                time.sleep(_PING_INTERVAL)
        finally:
            client.close()
        return f"redis-server did not answer PING within {STARTUP_TIMEOUT} s"

    def _watch(self) -> None:
        """Until no user is left (then shut the server down), or the server cannot run."""
        restarts: list[float] = []
        while self.process is not None:
            try:
                self.process.wait(timeout=POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                with self.data.locked(timeout=0) as held:
                    if held and not self.users.live():
                        _log("no user left: stopping redis-server")
                        self._stop()
                        return
                continue
            _log(f"redis-server exited with code {self.process.returncode}")
            # It died under its users (killed, out of memory): start it again from its
            # append-only file, under the lock so that no command starts another meanwhile.
            with self.data.locked(timeout=STOP_TIMEOUT) as held:
                if not (held and self.users.live()):
                    return
                now = time.monotonic()
                restarts = [at for at in restarts if now - at < RESTART_WINDOW] + [now]
                if len(restarts) > MAX_RESTARTS:
                    _log(f"redis-server died {len(restarts)} times in {RESTART_WINDOW:g} s: "
                         "not starting it again")
                    return
                _log("restarting redis-server from its append-only file for its users")
                self.process = self._start()

    def _stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            shutdown_server(str(self.data.socket_path))
        for stop in (None, process.terminate, process.kill):
            if stop is not None and process.poll() is None:
                stop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT)
                break
        state = self.data.read_state()
        if state is not None and state.supervisor_pid == os.getpid():
            self.data.remove_state()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soulspot_jobs.embedded.supervisor")
    parser.add_argument("data_dir")
    parser.add_argument("--executable", default=None)
    args = parser.parse_args(argv)
    data = DataDir(args.data_dir)
    executable = args.executable or find_redis_server()
    # Leave the starter: it waits for this first process, which exits as soon as the second one
    # (the supervisor proper) has recorded its pid as "starting" in redis.json.
    ready_read, ready_write = os.pipe()
    if os.fork() > 0:
        os.close(ready_write)
        recorded = os.read(ready_read, 1)
        os._exit(0 if recorded else 1)
    os.close(ready_read)
    data.write_state(
        ServerState(
            status="starting",
            supervisor_pid=os.getpid(),
            supervisor_started=start_time(os.getpid()),
        )
    )
    os.write(ready_write, b"1")
    os.close(ready_write)
    return Supervisor(data, executable).run()


if __name__ == "__main__":
    sys.exit(main())
