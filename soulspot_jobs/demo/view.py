"""What the demo shows while it runs and when it ends.

On a terminal a rich ``Live`` view, redrawn in place: the demo's jobs by state, each breaker's
state and ``retry_after``, deferred jobs per service. Elsewhere (a pipe, a log, CI) plain lines:
one per change of the counts, at most one a second. Both print the demo's events (slskd goes
down, comes back) as lines of their own, and the same summary at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from soulspot_jobs.jobs.records import JobState

#: The order job states are shown in.
STATE_ORDER = tuple(JobState)
#: Seconds between two plain progress lines, at least.
PLAIN_INTERVAL = 1.0
#: Redraws of the live view per second.
LIVE_REFRESH = 4


@dataclass(frozen=True)
class BreakerView:
    """One breaker as the view shows it."""

    service: str
    #: ``closed``, ``open`` or ``half_open``.
    state: str
    #: Seconds until an OPEN breaker admits trials; ``None`` unless OPEN.
    retry_after: float | None
    #: Failures its service had since the demo started.
    failures: int


@dataclass(frozen=True)
class Snapshot:
    """The demo at one moment."""

    #: Seconds since the demo started.
    elapsed: float
    #: What is happening (``slskd down, back in 3.2 s``).
    phase: str
    #: Download jobs by state (states with no job left out).
    jobs: Mapping[str, int]
    #: Download jobs expected (the playlist's tracks; 0 until the playlist is read).
    total: int
    breakers: tuple[BreakerView, ...]
    #: Jobs waiting for their service's breaker now, per service.
    deferred_now: Mapping[str, int]
    #: Deferrals so far, per service, of the messages that ran again since.
    deferrals: Mapping[str, int]
    #: Dramatiq retries spent so far.
    retries: int


@dataclass(frozen=True)
class Release:
    """How soon the jobs slskd's breaker had deferred ran once it closed (seconds after)."""

    #: The first deferred job to start after the close; ``None`` if none ran after it.
    first: float | None
    #: The last one.
    last: float | None
    #: Deferred messages that started after the close.
    messages: int


@dataclass(frozen=True)
class Summary:
    """How the demo ended; ``as_dict()`` is what ``--json`` prints."""

    #: Tracks in the playlist, and jobs the demo created (the import plus one per track).
    tracks: int
    jobs: int
    done: int
    failed: int
    #: Jobs in no final state when the demo stopped waiting.
    unfinished: int
    #: Deferrals per service (a job deferred three times counts three).
    deferrals: dict[str, int]
    #: Dramatiq retries spent on any message: only attempts that ran and failed spend one (the
    #: failures that opened the slskd breaker, and failed trials), never a deferred message.
    retries: int
    #: Failures of slskd counted by its breaker, and the breaker's ``failure_threshold``.
    slskd_failures: int
    failure_threshold: int
    #: Whether the demo saw the slskd breaker OPEN.
    slskd_opened: bool
    #: From slskd's breaker closing to its deferred jobs running; ``None`` if the demo did not
    #: see it close after it opened.
    slskd_release: Release | None
    outage_seconds: float
    wall_seconds: float
    worker_log: str
    #: Why the demo ended early (``timed out``, ``workers exited``); empty when it ran through.
    problem: str = ""

    @property
    def deferrals_total(self) -> int:
        return sum(self.deferrals.values())

    @property
    def succeeded(self) -> bool:
        return not self.problem and self.failed == 0 and self.done == self.jobs

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["wall_seconds"] = round(self.wall_seconds, 1)
        values["deferrals_total"] = self.deferrals_total
        values["ok"] = self.succeeded
        return values


def _counts(snapshot: Snapshot) -> str:
    jobs = snapshot.jobs
    counts = [f"{state} {jobs[state]}" for state in STATE_ORDER if jobs.get(state)]
    return ", ".join(counts) or "none yet"


def _breaker_text(breaker: BreakerView) -> str:
    text = f"{breaker.service} {breaker.state}"
    if breaker.retry_after is not None:
        text += f" (retry after {breaker.retry_after:.1f} s)"
    return text


def _release_text(release: Release | None) -> str:
    if release is None:
        return "n/a (not seen closing after it opened)"
    if release.first is None or release.last is None:
        return "n/a (no deferred job ran after it)"
    return (
        f"{release.first:.3f} s (the last of {release.messages} deferred messages "
        f"at {release.last:.2f} s)"
    )


def _per_service(values: Mapping[str, int]) -> str:
    shown = [f"{service} {count}" for service, count in values.items() if count]
    return ", ".join(shown) or "none"


class PlainView:
    """Progress as plain lines, for output that is not a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._last_line = ""
        self._last_at = float("-inf")

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def event(self, text: str) -> None:
        self.console.print(f"-- {text}", highlight=False, soft_wrap=True, markup=False)

    def show(self, snapshot: Snapshot) -> None:
        """Print the snapshot's line when it changed and the last one is a second old."""
        line = (
            f"jobs {sum(snapshot.jobs.values())}/{snapshot.total}: {_counts(snapshot)} | "
            f"breakers: {'; '.join(_breaker_text(b) for b in snapshot.breakers)} | "
            f"deferred now: {_per_service(snapshot.deferred_now)}"
        )
        now = time.monotonic()
        if line != self._last_line and now - self._last_at >= PLAIN_INTERVAL:
            stamped = f"[{snapshot.elapsed:5.1f} s] {line}"
            self.console.print(stamped, highlight=False, soft_wrap=True, markup=False)
            self._last_line, self._last_at = line, now


class LiveView:
    """Progress as a rich ``Live`` display redrawn in place, for a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live = Live(
            Text("starting..."),
            console=console,
            refresh_per_second=LIVE_REFRESH,
            transient=False,
        )

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.__exit__(exc_type, exc, tb)

    def event(self, text: str) -> None:
        self._live.console.print(f"[bold]{text}[/bold]")

    def show(self, snapshot: Snapshot) -> None:
        self._live.update(render(snapshot))


def render(snapshot: Snapshot) -> Group:
    """The live view of ``snapshot``: a header line and three small tables."""
    jobs = Table(title=f"Download jobs ({snapshot.total})", min_width=30)
    jobs.add_column("state")
    jobs.add_column("jobs", justify="right")
    for state in STATE_ORDER:
        jobs.add_row(state.value, str(snapshot.jobs.get(state, 0)))

    breakers = Table(title="Circuit breakers (shared in Redis)")
    for column in ("service", "state", "retry_after", "failures"):
        breakers.add_column(column)
    for breaker in snapshot.breakers:
        style = {"open": "red", "half_open": "yellow"}.get(breaker.state, "green")
        retry_after = "" if breaker.retry_after is None else f"{breaker.retry_after:.1f} s"
        breakers.add_row(
            breaker.service,
            Text(breaker.state, style=style),
            retry_after,
            str(breaker.failures),
        )

    deferred = Table(title="Deferred jobs")
    for column in ("service", "waiting now", "deferrals so far"):
        deferred.add_column(column)
    for breaker in snapshot.breakers:
        deferred.add_row(
            breaker.service,
            str(snapshot.deferred_now.get(breaker.service, 0)),
            str(snapshot.deferrals.get(breaker.service, 0)),
        )
    header = Text(
        f"{snapshot.elapsed:5.1f} s  {snapshot.phase}  (Dramatiq retries: {snapshot.retries})"
    )
    return Group(header, jobs, breakers, deferred)


def print_summary(console: Console, summary: Summary, *, as_json: bool) -> None:
    """The summary as a table, then (with ``as_json``) as one JSON line, the last of the output."""
    table = Table(title="Demo summary", show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    rows = (
        ("jobs (playlist import + downloads)", str(summary.jobs)),
        ("done", str(summary.done)),
        ("failed", str(summary.failed)),
        ("unfinished", str(summary.unfinished)),
        ("deferrals", f"{summary.deferrals_total} ({_per_service(summary.deferrals)})"),
        ("Dramatiq retries spent", str(summary.retries)),
        (
            "slskd failures seen by its breaker",
            f"{summary.slskd_failures} (opens at {summary.failure_threshold})",
        ),
        ("slskd breaker opened", "yes" if summary.slskd_opened else "no"),
        ("slskd breaker closed → first deferred job running", _release_text(summary.slskd_release)),
        ("slskd outage", f"{summary.outage_seconds:.1f} s"),
        ("wall time", f"{summary.wall_seconds:.1f} s"),
    )
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if summary.problem:
        console.print(f"[red]The demo did not finish: {summary.problem}[/red]")
    console.print(f"Worker logs: {summary.worker_log}", highlight=False, soft_wrap=True)
    if as_json:
        console.out(json.dumps(summary.as_dict()), highlight=False)
