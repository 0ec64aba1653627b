"""``ExitGuard``: a worker process stops on SIGTERM within its shutdown timeout, whatever state
Redis is in.

Two things used to keep a worker process alive for ever once Redis was unreachable, or once its
``dramatiq`` parent was killed (a third, the event-loop thread, is :mod:`.asyncio`'s):

* Under the ``dramatiq`` command every worker process writes its output (logs included) into a
  pipe that the parent process reads. When the parent is killed (``kill -9``, an OOM kill),
  nobody reads that pipe any more: once it is full, every log call blocks for ever, and a worker
  logs a lot while Redis is unreachable. A parent killed while its children boot also leaves a
  child blocked for ever in the start-up handshake. :class:`ExitGuard` notices the parent's
  death within :data:`CHECK_INTERVAL`, points the process's output at the stderr it inherited
  and sends itself SIGTERM.
* Whatever else blocks, :class:`ExitGuard` ends the process :data:`GRACE` seconds after its
  shutdown timeout (``--worker-shutdown-timeout``) once SIGTERM arrived.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, TextIO

import dramatiq
from dramatiq.middleware import Middleware

#: Seconds between two looks at the parent process.
CHECK_INTERVAL = 0.25
#: Seconds past the shutdown timeout after which a stopping worker process exits regardless.
GRACE = 5.0
#: Dramatiq's default ``--worker-shutdown-timeout``, in milliseconds.
DEFAULT_SHUTDOWN_TIMEOUT = 600_000
#: Exit status of a process ended by the deadline (Dramatiq's "killed").
EXIT_KILLED = 1
#: Seconds the parent watch waits for a log handler busy writing into the dead parent's pipe.
HANDLER_WAIT = 0.5


class ExitGuard(Middleware):
    """In each worker process of the ``dramatiq`` command: a deadline once SIGTERM arrives, and
    a watch on the parent process (see :func:`guard_worker_process`)."""

    def __init__(self, *, check_interval: float = CHECK_INTERVAL, grace: float = GRACE) -> None:
        self.check_interval = check_interval
        self.grace = grace

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        guard_worker_process(check_interval=self.check_interval, grace=self.grace)


#: Set once this process is guarded.
_guarded = threading.Event()


def guard_worker_process(*, check_interval: float = CHECK_INTERVAL, grace: float = GRACE) -> None:
    """Arm a deadline on SIGTERM and watch the parent, once per forked worker process.

    Called as early as possible (the worker module calls it before anything can fail, since a
    worker process whose boot fails after its parent died blocks for ever in Dramatiq's start-up
    handshake), and again by :class:`ExitGuard`. A no-op in a process that was not forked by
    ``multiprocessing`` (a program importing the worker module) and off the main thread.
    """
    if (
        _guarded.is_set()
        or multiprocessing.parent_process() is None
        or threading.current_thread() is not threading.main_thread()
    ):
        return
    _guarded.set()
    deadline = _Deadline(shutdown_timeout(sys.argv) / 1000 + grace)
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        deadline.arm()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    threading.Thread(
        target=_watch_parent,
        args=(_parent_pid(), check_interval, deadline),
        name="soulspot-parent-watch",
        daemon=True,
    ).start()


def shutdown_timeout(argv: list[str]) -> int:
    """The ``--worker-shutdown-timeout`` (milliseconds) of a ``dramatiq`` command line."""
    flag = "--worker-shutdown-timeout"
    for position, argument in enumerate(argv):
        value = None
        if argument == flag and position + 1 < len(argv):
            value = argv[position + 1]
        elif argument.startswith(flag + "="):
            value = argument.partition("=")[2]
        if value is not None and value.isdigit():
            return int(value)
    return DEFAULT_SHUTDOWN_TIMEOUT


class _Deadline:
    """Ends the process ``seconds`` after it is armed, unless it exited by then."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(self.seconds, os._exit, args=(EXIT_KILLED,))
                self._timer.daemon = True
                self._timer.start()


def _watch_parent(parent: int, interval: float, deadline: _Deadline) -> None:
    while os.getppid() == parent:
        threading.Event().wait(interval)
    deadline.arm()
    _leave_parent_pipe()
    os.kill(os.getpid(), signal.SIGTERM)


def _parent_pid() -> int:
    """The pid of the process that forked this one (it may have died since)."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getppid()


def _leave_parent_pipe() -> None:
    """Write from now on to the stderr this process inherited, not to the dead parent's pipe.

    A handler blocked mid-write on the full pipe keeps its lock: it is left as it is (the
    deadline ends the process if that blocks the shutdown).
    """
    pipe: Any = sys.stderr
    inherited: TextIO = open(os.dup(2), "w", buffering=1, closefd=True)  # noqa: SIM115
    sys.stdout = sys.stderr = inherited
    for logger in [logging.getLogger(), *_named_loggers()]:
        for handler in logger.handlers:
            if not isinstance(handler, logging.StreamHandler) or handler.stream is not pipe:
                continue
            if handler.lock is not None and handler.lock.acquire(timeout=HANDLER_WAIT):
                try:
                    handler.stream = inherited
                finally:
                    handler.lock.release()
    logging.getLogger("soulspot_jobs.worker").warning(
        "The dramatiq parent process is gone; this worker process shuts down."
    )


def _named_loggers() -> list[logging.Logger]:
    manager = logging.Logger.manager
    return [item for item in manager.loggerDict.values() if isinstance(item, logging.Logger)]
