"""A worker process stops on SIGTERM within its shutdown timeout, whatever state Redis is in.

Two things used to keep a worker process alive for ever once Redis was unreachable:

* Dramatiq's event-loop thread (for ``async def`` actors) is not a daemon thread and is stopped
  only at the very end of ``Worker.stop``; with Redis down, ``Worker.stop`` fails earlier (it
  cannot requeue the messages it prefetched; they stay in its ack set and come back through the
  broker's maintenance), and the process then waits for that thread for ever.
  :class:`DaemonAsyncIO` runs the same event loop in a daemon thread.
* Under the ``dramatiq`` command every worker process writes its output (logs included) into a
  pipe that the parent process reads and copies to its own stderr. When the parent is killed
  (``kill -9``, an OOM kill), nobody reads that pipe any more: once it is full, every log call
  blocks for ever, and a worker logs a lot while Redis is unreachable. :class:`ParentWatch`
  notices the parent's death within :data:`CHECK_INTERVAL`, points the process's output at the
  stderr it inherited (the parent's own terminal or log file) and sends itself SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any, TextIO

import dramatiq
from dramatiq.asyncio import EventLoopThread, set_event_loop_thread
from dramatiq.middleware import AsyncIO, Middleware

#: Seconds between two looks at the parent process.
CHECK_INTERVAL = 0.25


class DaemonAsyncIO(AsyncIO):
    """Dramatiq's AsyncIO middleware with its event loop in a daemon thread."""

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        thread = EventLoopThread(self.logger)
        thread.daemon = True
        thread.start(timeout=1.0)
        set_event_loop_thread(thread)


class ParentWatch(Middleware):
    """Started in each worker process (``after_process_boot``); stops it when the parent dies."""

    def __init__(self, *, check_interval: float = CHECK_INTERVAL) -> None:
        self.check_interval = check_interval

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        parent = os.getppid()
        threading.Thread(
            target=_watch,
            args=(parent, self.check_interval),
            name="soulspot-parent-watch",
            daemon=True,
        ).start()


def _watch(parent: int, interval: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval):
        if os.getppid() != parent:
            _leave_parent_pipe()
            logging.getLogger("soulspot_jobs.worker").warning(
                "The dramatiq parent process is gone; this worker process shuts down."
            )
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _leave_parent_pipe() -> None:
    """Write from now on to the stderr this process inherited, not to the parent's pipe."""
    pipe: Any = sys.stderr
    inherited: TextIO = open(os.dup(2), "w", buffering=1, closefd=True)  # noqa: SIM115
    sys.stdout = sys.stderr = inherited
    for logger in [logging.getLogger(), *_named_loggers()]:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is pipe:
                handler.setStream(inherited)


def _named_loggers() -> list[logging.Logger]:
    manager = logging.Logger.manager
    return [item for item in manager.loggerDict.values() if isinstance(item, logging.Logger)]
