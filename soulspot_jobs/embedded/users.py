"""The processes using the shared server: one file per process, ``users/<pid>``.

A process adds itself when it starts using the server and removes itself when it stops. A
process that dies without removing itself (``kill -9``, a forked worker leaving through
``os._exit``) is found dead by the next look and its file deleted, so the count of users is
always the count of live processes. Callers hold the data directory's lock.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from soulspot_jobs.embedded.processes import is_alive, start_time


class Users:
    """The user registry in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, pid: int | None = None) -> None:
        pid = pid if pid is not None else os.getpid()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.directory / str(pid)).write_text(start_time(pid))

    def remove(self, pid: int | None = None) -> None:
        pid = pid if pid is not None else os.getpid()
        with contextlib.suppress(FileNotFoundError):
            (self.directory / str(pid)).unlink()

    def live(self) -> list[int]:
        """The pids of live users, in order; the files of dead ones are deleted on the way."""
        alive = []
        for entry in self._entries():
            pid = int(entry.name)
            try:
                started = entry.read_text().strip()
            except OSError:
                continue
            if is_alive(pid, started):
                alive.append(pid)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        return sorted(alive)

    def clear(self) -> None:
        for entry in self._entries():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()

    def _entries(self) -> list[Path]:
        try:
            return [entry for entry in self.directory.iterdir() if entry.name.isdigit()]
        except FileNotFoundError:
            return []
