"""Watching a source tree for changed ``.py`` files, for ``soulspot-jobs worker --watch``.

Beside ``dramatiq --watch DIR`` (which reloads its worker processes on a ``*.py`` change but
does not start Dramatiq again once Dramatiq itself exited), this watcher restarts the whole
Dramatiq command, so a syntax error fixed in the editor brings the workers back. The file name's
suffix is compared directly, which means the same under every watchdog version, and the
observer falls back to polling where the system's file events are unavailable
(inotify watches exhausted, some network file systems).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

#: Suffix of the files whose change reloads the workers.
SOURCE_SUFFIX = ".py"
#: Events that say a file was looked at, not changed (watchdog 2.3+ and 5+ emit them).
_READ_ONLY_EVENTS = frozenset({"opened", "closed_no_write"})


def is_source_change(event: FileSystemEvent) -> bool:
    """Whether ``event`` creates, changes, moves or deletes a ``.py`` file (not a directory)."""
    if event.is_directory or event.event_type in _READ_ONLY_EVENTS:
        return False
    paths = (event.src_path, getattr(event, "dest_path", "") or "")
    return any(_is_source(path) for path in paths)


def _is_source(path: str | bytes) -> bool:
    name = Path(path.decode() if isinstance(path, bytes) else path)
    return name.suffix == SOURCE_SUFFIX and "__pycache__" not in name.parts


class _SourceChanges(FileSystemEventHandler):
    def __init__(self, on_change: Callable[[str], None]) -> None:
        self.on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if is_source_change(event):
            path = event.src_path
            self.on_change(path.decode() if isinstance(path, bytes) else path)


def watch_sources(directory: Path, on_change: Callable[[str], None]) -> BaseObserver:
    """Call ``on_change(path)`` from a watchdog thread whenever a ``.py`` file under
    ``directory`` changes; stop the returned observer (``stop()``, ``join()``) when done."""
    handler = _SourceChanges(on_change)
    for observer_class in (Observer, PollingObserver):
        observer = observer_class()
        try:
            observer.schedule(handler, str(directory), recursive=True)
            observer.start()
        except OSError:
            continue
        return observer
    raise OSError(f"cannot watch {directory} for changes")
