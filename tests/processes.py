"""Commands a test runs as real processes, with their output read as it comes.

``Spawned`` starts a command with its stdout and stderr read line by line by two threads, so a
test can wait for a line (``wait_for``) instead of sleeping, and makes sure the process and
everything in its process group is gone when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.polling import wait_until

#: Seconds a command may take to exit after it was asked to stop.
EXIT_DEADLINE = 30.0
#: The console script of the package, next to the test interpreter.
SOULSPOT_JOBS = str(Path(sys.executable).with_name("soulspot-jobs"))


def environment(data_dir: Path, **variables: str) -> dict[str, str]:
    """This environment without ``REDIS_URL``, on ``data_dir``, plus ``variables``."""
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    env.update(SOULSPOT_DATA_DIR=str(data_dir), **variables)
    return env


class Spawned:
    """A running command whose output lines accumulate in ``stdout`` and ``stderr``."""

    def __init__(
        self, command: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None
    ) -> None:
        self.command = list(command)
        self.process = subprocess.Popen(
            self.command,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout)),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def lines(self, text: str, stream: str = "stderr") -> list[str]:
        """The lines of ``stream`` so far that contain ``text``."""
        return [line for line in list(getattr(self, stream)) if text in line]

    def wait_for(
        self, text: str, *, count: int = 1, stream: str = "stderr", timeout: float = 30.0
    ) -> list[str]:
        """Wait until ``count`` lines of ``stream`` contain ``text``; fail if it exits first."""

        def seen() -> bool:
            if len(self.lines(text, stream)) >= count:
                return True
            assert self.process.poll() is None, (
                f"{self.command} exited with {self.process.returncode} before printing "
                f"{text!r}:\n" + "".join(self.stderr[-30:])
            )
            return False

        wait_until(seen, f"{count} line(s) with {text!r}", timeout)
        return self.lines(text, stream)

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()

    def wait(self, timeout: float = EXIT_DEADLINE) -> int:
        """Wait for the exit status; the output read so far is complete afterwards."""
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def stop(self, signum: int = signal.SIGTERM, timeout: float = EXIT_DEADLINE) -> int:
        """Send ``signum`` and wait for the exit status."""
        self.process.send_signal(signum)
        return self.wait(timeout)

    def kill_group(self) -> None:
        """Kill whatever is left of the command: its process group and every descendant,
        including those in process groups of their own (test clean-up).

        Descendants go first: once the test stops reading its output, a Dramatiq left running
        would block for ever writing its logs.
        """
        for pid in _descendants(self.process.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(EXIT_DEADLINE)
        self.close_stdin()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)


def _descendants(root: int) -> list[int]:
    """Pids of every live descendant of ``root``, read from ``/proc`` (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found
