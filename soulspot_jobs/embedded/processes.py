"""Which processes are alive, told apart from later processes that reuse their pid.

A pid alone is not an identity: the kernel hands it out again once its process is gone. On
Linux a process is identified by its pid and its start time (``/proc/<pid>/stat``, field 22),
and a zombie (ended, not yet reaped by its parent) counts as gone. Elsewhere a pid that accepts
signal 0 counts as alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

#: Seconds between two looks while waiting for a process to end.
_POLL = 0.02


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3 onwards of ``/proc/<pid>/stat`` (after the command name), or ``None``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode(errors="replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def start_time(pid: int) -> str:
    """An opaque token that changes when ``pid`` is reused: the start time, in clock ticks."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None and len(fields) > 19 else ""


def is_alive(pid: int, started: str = "") -> bool:
    """Whether ``pid`` runs and, when ``started`` is given, is the process that had that token."""
    if pid <= 0:
        return False
    fields = _stat_fields(pid)
    if fields is not None:
        if fields[0] in ("Z", "X"):
            return False
        return not started or (len(fields) > 19 and fields[19] == started)
    if os.path.isdir("/proc/self"):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_exit(pid: int, timeout: float, started: str = "") -> bool:
    """Wait until ``pid`` has ended (it need not be our child); ``False`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while is_alive(pid, started):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def end_process(pid: int, timeout: float, started: str = "") -> None:
    """SIGTERM ``pid``, then SIGKILL it if it is still there after ``timeout`` s."""
    for stop in (signal.SIGTERM, signal.SIGKILL):
        if not is_alive(pid, started):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, stop)
        if wait_for_exit(pid, timeout, started):
            return
