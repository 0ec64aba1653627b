"""The demo's worker processes: the production worker command in a process group of its own.

``dramatiq soulspot_jobs.worker soulspot_jobs.demo.instrument`` runs in a new session (so a
terminal's Ctrl-C reaches only the demo, which stops the workers in order), logs to a file, and
is stopped as a group: SIGTERM to the command, which stops its worker processes and waits for
them, then SIGKILL to whatever is left of the group after a timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from soulspot_jobs.errors import SoulspotJobsError

#: Worker processes and threads per process.
PROCESSES = 2
THREADS = 4
#: Seconds the worker command lets its worker processes finish after SIGTERM (it kills them
#: then), and seconds the demo waits for the command before it kills the whole group.
WORKER_SHUTDOWN_TIMEOUT = 8.0
STOP_TIMEOUT = 10.0
#: Run by a fresh interpreter before it becomes the worker command (Linux): asks the kernel for
#: SIGTERM when the demo dies, so even a killed demo leaves no worker behind. It runs after
#: exec, not between fork and exec, where a multi-threaded parent's locks make code unsafe.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the demo died before the request was made
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class DemoError(SoulspotJobsError):
    """The demo cannot go on (its worker processes exited)."""


class WorkerProcesses:
    """``dramatiq soulspot_jobs.worker soulspot_jobs.demo.instrument`` in a process group of its
    own, logging to ``log_path``; stopped group-wide, so no worker process outlives the demo.

    The group's leader gets SIGTERM if the demo dies without cleaning up (Linux), and passes it
    on to its worker processes.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log_path: Path,
        cwd: Path,
        processes: int = PROCESSES,
        threads: int = THREADS,
    ) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.processes = processes
        self.threads = threads
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dramatiq",
            "soulspot_jobs.worker",
            "soulspot_jobs.demo.instrument",
            "--processes",
            str(self.processes),
            "--threads",
            str(self.threads),
            "--worker-shutdown-timeout",
            str(int(WORKER_SHUTDOWN_TIMEOUT * 1000)),
        ]

    def __enter__(self) -> WorkerProcesses:
        command = self.command
        if sys.platform.startswith("linux"):
            command = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command[1:]]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check(self) -> None:
        """Raise :class:`DemoError` if the worker command has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise DemoError(
                f"the worker processes exited with status {self.process.returncode}; "
                f"see {self.log_path}"
            )

    def stop(self) -> None:
        """SIGTERM to the worker command (it stops its worker processes and waits for them),
        then SIGKILL to whatever is left of the group after the timeout."""
        if self.process is None:
            return
        group = self.process.pid  # the leader of a new session leads its own process group
        self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait()
        self.process = None
