"""``soulspot-jobs worker``: Dramatiq's worker processes for our actors, run and stopped cleanly.

The command runs Dramatiq's command line (``dramatiq soulspot_jobs.worker``, through
:mod:`soulspot_jobs.operate.dramatiq_child`) as a child in a process group of its own, so a
terminal's Ctrl-C reaches only this process, which decides what to pass on:

* SIGTERM or SIGINT: SIGTERM to Dramatiq's main process, which stops its worker processes
  (each finishes the messages it is running and gives back the ones it prefetched); once it
  has exited this process exits with its status, 0 on a clean stop. A second signal is passed
  on too, and Dramatiq then kills its workers. (The signal goes to Dramatiq's main process
  only: sent to the whole group, each worker process would get it twice and take the second
  as "kill now".)
* ``--watch``: when a ``.py`` file under the watched directory changes, Dramatiq is stopped the
  same way and started again; if it exits on its own (a syntax error), the next change starts
  it again.

If this process is killed outright, the kernel sends SIGTERM to Dramatiq (parent-death signal).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

import structlog

from soulspot_jobs.logging import redact_url
from soulspot_jobs.operate.dramatiq_child import PARENT_PID_ENV
from soulspot_jobs.operate.source_watch import watch_sources

#: Seconds of quiet after a source change before the workers restart (one save, one restart).
RELOAD_DEBOUNCE = 0.3
#: Seconds between two looks at the child when nothing wakes the loop.
_IDLE_WAKE = 1.0
#: Signals that stop the workers.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = structlog.get_logger("soulspot_jobs.worker")


def dramatiq_command(processes: int | None, threads: int | None) -> list[str]:
    """The child's command line: Dramatiq's CLI on :mod:`soulspot_jobs.worker`."""
    command = [sys.executable, "-m", "soulspot_jobs.operate.dramatiq_child", "soulspot_jobs.worker"]
    if processes is not None:
        command += ["--processes", str(processes)]
    if threads is not None:
        command += ["--threads", str(threads)]
    return command


class WorkerRunner:
    """Runs ``command`` until a stop signal, restarting it on source changes under ``watch``."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        watch: Path | None = None,
        redis_url: str = "",
    ) -> None:
        self.command = list(command)
        self.redis_url = redact_url(redis_url)
        self.env = dict(env if env is not None else os.environ)
        self.watch = watch
        self._wake = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None
        self._stop_signals = 0
        self._stops_passed_on = 0
        self._stop_signal_name = ""
        self._changed_at: float | None = None
        self._changed_path = ""
        self._restarting = False

    def run(self) -> int:
        """Run until stopped; the exit status to report (0 after a clean stop)."""
        previous = {sig: signal.signal(sig, self._on_stop_signal) for sig in STOP_SIGNALS}
        observer = watch_sources(self.watch, self._on_change) if self.watch else None
        try:
            self._child = self._spawn()
            return self._loop()
        finally:
            if observer is not None:
                observer.stop()
                observer.join()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._kill_leftovers()

    def _loop(self) -> int:
        while True:
            self._wake.wait(self._wait_time())
            self._wake.clear()
            child = self._child
            code = child.poll() if child is not None else None
            if self._stop_signals:
                if self._stop_signals > self._stops_passed_on:
                    self._stops_passed_on = self._stop_signals
                    log.info("worker.stopping", signal=self._stop_signal_name, pid=os.getpid())
                    self._signal_child(signal.SIGTERM)
                if child is None or code is not None:
                    log.info("worker.stopped", exit_code=code or 0)
                    return code or 0
                continue
            if child is not None and code is not None:
                self._child = None
                if self._restarting:
                    self._restarting = False
                    self._child = self._spawn()
                    continue
                if self.watch is None:
                    log.error("worker.exited", exit_code=code)
                    return code
                log.error("worker.exited", exit_code=code, waiting_for="a source change")
            if self._reload_due():
                self._changed_at = None
                log.info("worker.reloading", changed=self._changed_path)
                if self._child is None:
                    self._child = self._spawn()
                elif not self._restarting:
                    self._restarting = True
                    self._signal_child(signal.SIGTERM)

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start Dramatiq from the main thread (its parent-death signal follows this thread)."""
        env = {**self.env, PARENT_PID_ENV: str(os.getpid())}
        child = subprocess.Popen(self.command, env=env, process_group=0)
        threading.Thread(target=self._wake_on_exit, args=(child,), daemon=True).start()
        log.info(
            "worker.started",
            pid=child.pid,
            command=" ".join(self.command[2:]),
            redis=self.redis_url,
        )
        return child

    def _wake_on_exit(self, child: subprocess.Popen[bytes]) -> None:
        child.wait()
        self._wake.set()

    def _wait_time(self) -> float:
        if self._changed_at is None:
            return _IDLE_WAKE
        return max(0.0, self._changed_at + RELOAD_DEBOUNCE - time.monotonic())

    def _reload_due(self) -> bool:
        return (
            self._changed_at is not None and time.monotonic() >= self._changed_at + RELOAD_DEBOUNCE
        )

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only flags here (the main thread may hold the logging lock when the signal arrives);
        # the loop, woken at once, passes the signal on.
        self._stop_signals += 1
        self._stop_signal_name = signal.Signals(signum).name
        self._wake.set()

    def _on_change(self, path: str) -> None:
        self._changed_path = path
        self._changed_at = time.monotonic()
        self._wake.set()

    def _signal_child(self, signum: int) -> None:
        child = self._child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    def _kill_leftovers(self) -> None:
        """Leave nothing behind if the loop ended abnormally (an exception in this process)."""
        child = self._child
        if child is None:
            return
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
