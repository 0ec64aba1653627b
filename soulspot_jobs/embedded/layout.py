"""Where the shared embedded Redis keeps its files, and the lock that serialises changes to them.

Every process that uses the embedded server agrees on it through one data directory
(``SOULSPOT_DATA_DIR``, default ``./.soulspot/``)::

    redis.lock    fcntl lock held while a process starts, joins, leaves or stops the server
    redis.json    the running server: its pid, its supervisor's pid, its socket (see ServerState)
    redis.log     what redis-server and its supervisor printed
    redis/        redis-server's working directory: the append-only file (appendonly.aof)
    users/<pid>   one file per process using the server, holding that process's start time
    redis.sock    the server's unix socket (under the temp dir when this path would be too long)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from soulspot_jobs.errors import SoulspotJobsError

#: Longest unix socket path the kernel accepts (``sun_path`` is 108 bytes with its NUL on Linux).
MAX_SOCKET_PATH = 100
#: Seconds a process waits for another one to release the lock before giving up.
LOCK_TIMEOUT = 60.0
#: Seconds between two attempts at taking a busy lock.
_LOCK_POLL = 0.02


class SharedRedisError(SoulspotJobsError):
    """The shared embedded Redis could not be started, joined or stopped."""


@dataclass(frozen=True)
class ServerState:
    """What ``redis.json`` says about the server: written by its supervisor once it answers.

    ``status`` is ``ready`` (the server answers on ``socket``) or ``failed`` (it could not start;
    ``error`` says why).
    """

    status: str
    supervisor_pid: int
    #: Start-time tokens of the supervisor and of redis-server (see ``processes.start_time``).
    supervisor_started: str = ""
    pid: int = 0
    pid_started: str = ""
    socket: str = ""
    #: When the server answered its first PING (Unix time, seconds).
    started_at: float = 0.0
    error: str = ""

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"


class DataDir:
    """The files of one data directory; ``root`` is made absolute so children agree on it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()

    @property
    def lock_path(self) -> Path:
        return self.root / "redis.lock"

    @property
    def state_path(self) -> Path:
        return self.root / "redis.json"

    @property
    def log_path(self) -> Path:
        return self.root / "redis.log"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def users_dir(self) -> Path:
        return self.root / "users"

    @property
    def socket_path(self) -> Path:
        """``redis.sock`` in the data directory, or a short path derived from it in the temp dir."""
        inside = self.root / "redis.sock"
        if len(str(inside)) <= MAX_SOCKET_PATH:
            return inside
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"soulspot-redis-{digest}.sock"

    def create(self) -> None:
        """Create the directory tree, for its owner only (the socket carries no password)."""
        for directory in (self.root, self.redis_dir, self.users_dir):
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise SharedRedisError(
                    f"cannot create the data directory {directory} (SOULSPOT_DATA_DIR): "
                    f"{exc.strerror or exc}"
                ) from None

    @contextlib.contextmanager
    def locked(self, *, timeout: float = LOCK_TIMEOUT) -> Iterator[bool]:
        """Hold ``redis.lock`` exclusively; yields ``False`` if it stayed busy for ``timeout`` s.

        ``timeout=0`` tries once. The lock is an ``flock`` on an open file, so it is released
        by the kernel when its holder dies, however it dies.
        """
        self.create()
        descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(_LOCK_POLL)
            try:
                yield True
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)

    def read_state(self) -> ServerState | None:
        """The recorded server, or ``None`` when there is none (or the file is unreadable)."""
        try:
            values = json.loads(self.state_path.read_text())
            return ServerState(**values)
        except (OSError, ValueError, TypeError):
            return None

    def write_state(self, state: ServerState) -> None:
        """Replace ``redis.json`` atomically (write a temporary file, then rename it)."""
        temporary = self.state_path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(state)))
        temporary.replace(self.state_path)

    def remove_state(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of ``redis.log``, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:]) or "(empty log)"
