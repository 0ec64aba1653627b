"""``SharedRedis``: the one embedded redis-server of a data directory, shared by its users.

A process *attaches* before it uses the server and *detaches* when it is done. Attaching takes
the data directory's lock, registers the process as a user and, if no healthy server is
recorded, starts one through its supervisor (:mod:`soulspot_jobs.embedded.supervisor`)
before letting go of the lock; so two processes starting at once end up on the same server.
Detaching unregisters the process and, if it was the last live user, stops the server at once
(the supervisor would also notice within a fraction of a second, which is what happens when a
user dies without detaching). Attachments are counted per process, so nested ``attach`` calls
cost nothing, and whatever a process still holds at interpreter exit is detached then.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import soulspot_jobs
from soulspot_jobs.embedded.control import (
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    answers,
    shutdown_server,
)
from soulspot_jobs.embedded.layout import DataDir, ServerState, SharedRedisError
from soulspot_jobs.embedded.processes import end_process, is_alive, wait_for_exit
from soulspot_jobs.embedded.server import find_redis_server
from soulspot_jobs.embedded.users import Users

#: Seconds a starting process waits for the server beyond the supervisor's own startup limit.
START_MARGIN = 5.0
#: Seconds a running server gets to answer PING before it is taken for hung and replaced.
HEALTH_TIMEOUT = 10.0
#: Seconds a detaching process waits for the lock before leaving the stop to the supervisor.
DETACH_LOCK_TIMEOUT = 5.0
#: Seconds a supervisor gets to exit by itself after its server ended (it looks 4 times a second).
SUPERVISOR_EXIT_WAIT = 2.0
#: Seconds between two looks at a starting server.
_POLL = 0.02


@dataclass(frozen=True)
class ServerStatus:
    """What ``soulspot-jobs redis status`` shows about a data directory's server."""

    data_dir: str
    running: bool
    url: str | None = None
    pid: int | None = None
    supervisor_pid: int | None = None
    users: list[int] = field(default_factory=list)
    #: When the server started (Unix time, seconds).
    started_at: float | None = None
    log: str = ""
    #: Bytes in the append-only file(s).
    aof_bytes: int = 0


@dataclass
class _Attachment:
    pid: int
    url: str
    count: int


#: This process's attachments, by data directory; entries of a parent process are ignored.
_attached: dict[Path, _Attachment] = {}
_attached_lock = threading.Lock()


class SharedRedis:
    """The embedded server of the data directory ``data_dir`` (created if missing)."""

    def __init__(self, data_dir: str | os.PathLike[str], *, executable: str | None = None) -> None:
        self.data = DataDir(data_dir)
        self.users = Users(self.data.users_dir)
        self.executable = executable

    def attach(self) -> str:
        """Join the running server, or start it; return its ``unix://`` URL."""
        with _attached_lock:
            attachment = _attached.get(self.data.root)
            if attachment is not None and attachment.pid == os.getpid():
                attachment.count += 1
                return attachment.url
            url = self._join()
            _attached[self.data.root] = _Attachment(os.getpid(), url, 1)
            return url

    def detach(self) -> None:
        """Undo one ``attach``; the last one of the last user process stops the server."""
        with _attached_lock:
            attachment = _attached.get(self.data.root)
            if attachment is None or attachment.pid != os.getpid():
                return
            attachment.count -= 1
            if attachment.count > 0:
                return
            del _attached[self.data.root]
            self._leave()

    def stop(self) -> ServerStatus:
        """Stop the server whoever still uses it; returns what was running (``running=False``:
        nothing was)."""
        if not self.data.root.is_dir():
            return self._status()
        with self._locked():
            status = self._status()
            state = self.data.read_state()
            if state is not None:
                self._stop_server(state)
            self.users.clear()
        return status

    def status(self) -> ServerStatus:
        """Whether a server runs for this data directory, where, and for whom."""
        if not self.data.root.is_dir():
            return self._status()
        with self._locked():
            return self._status()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self.data.locked() as held:
            if not held:
                raise SharedRedisError(
                    f"{self.data.lock_path} stayed locked by another process; "
                    "is a soulspot-jobs command hanging?"
                )
            yield

    def _join(self) -> str:
        with self._locked():
            state = self._healthy_state()
            self.users.add()
            if state is None:
                try:
                    state = self._start()
                except BaseException:
                    self.users.remove()
                    raise
            return state.url

    def _leave(self) -> None:
        with self.data.locked(timeout=DETACH_LOCK_TIMEOUT) as held:
            self.users.remove()
            if not held or self.users.live():
                return
            state = self.data.read_state()
            if state is not None:
                self._stop_server(state)

    def _healthy_state(self) -> ServerState | None:
        """The recorded server if it runs and answers; a stale record is cleaned up."""
        state = self.data.read_state()
        if state is None:
            return None
        if (
            state.status == "ready"
            and is_alive(state.supervisor_pid, state.supervisor_started)
            and is_alive(state.pid, state.pid_started)
            and answers(state.socket, within=HEALTH_TIMEOUT)
        ):
            return state
        self._stop_server(state)
        return None

    def _start(self) -> ServerState:
        """Start a supervisor and its server (the lock is held); wait until it answers."""
        executable = self.executable or find_redis_server()
        self.data.remove_state()
        package_parent = str(Path(soulspot_jobs.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (package_parent, env.get("PYTHONPATH")) if part
        )
        command = [
            sys.executable, "-m", "soulspot_jobs.embedded.supervisor",
            str(self.data.root), "--executable", executable,
        ]  # fmt: skip
        with open(self.data.log_path, "ab") as log:
            launcher = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data.root,
                env=env,
                start_new_session=True,
            )
        if launcher.wait() != 0:
            raise self._start_error("its supervisor did not start")
        deadline = time.monotonic() + STARTUP_TIMEOUT + START_MARGIN
        while True:
            state = self.data.read_state()
            if state is None or not is_alive(state.supervisor_pid, state.supervisor_started):
                raise self._start_error("its supervisor ended")
            if state.status == "failed":
                raise self._start_error(state.error)
            if state.status == "ready" and answers(state.socket):
                return state
            if time.monotonic() >= deadline:
                self._stop_server(state)
                raise self._start_error(f"no answer within {STARTUP_TIMEOUT + START_MARGIN} s")
            time.sleep(_POLL)

    def _start_error(self, reason: str) -> SharedRedisError:
        return SharedRedisError(
            f"the embedded redis-server in {self.data.root} did not start: {reason} "
            f"(see {self.data.log_path})"
        )

    def _stop_server(self, state: ServerState) -> None:
        """End the recorded server and its supervisor, then forget them (the lock is held)."""
        if state.pid and is_alive(state.pid, state.pid_started):
            shutdown_server(state.socket)
            if not wait_for_exit(state.pid, STOP_TIMEOUT, state.pid_started):
                end_process(state.pid, STOP_TIMEOUT, state.pid_started)
        # Once its server has ended the supervisor exits by itself; a starting one needs a push.
        supervisor = (state.supervisor_pid, state.supervisor_started)
        if not wait_for_exit(supervisor[0], SUPERVISOR_EXIT_WAIT, supervisor[1]):
            end_process(supervisor[0], STOP_TIMEOUT, supervisor[1])
        self.data.remove_state()

    def _status(self) -> ServerStatus:
        state = self.data.read_state()
        running = (
            state is not None and state.status == "ready" and is_alive(state.pid, state.pid_started)
        )
        aof_bytes = sum(
            path.stat().st_size
            for path in self.data.redis_dir.glob("appendonly*")
            if path.is_file()
        )
        if not running or state is None:
            return ServerStatus(
                str(self.data.root), False, log=str(self.data.log_path), aof_bytes=aof_bytes
            )
        return ServerStatus(
            data_dir=str(self.data.root),
            running=True,
            url=state.url,
            pid=state.pid,
            supervisor_pid=state.supervisor_pid,
            users=self.users.live(),
            started_at=state.started_at,
            log=str(self.data.log_path),
            aof_bytes=aof_bytes,
        )


@atexit.register
def _detach_all() -> None:
    """Detach what this process still holds when its interpreter exits."""
    with _attached_lock:
        mine = [root for root, held in _attached.items() if held.pid == os.getpid()]
    for root in mine:
        with _attached_lock:
            attachment = _attached.get(root)
            if attachment is not None:
                attachment.count = 1
        SharedRedis(root).detach()
