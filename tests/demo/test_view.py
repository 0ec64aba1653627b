"""What the demo shows: the live view on a terminal, plain lines elsewhere, the JSON summary."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from soulspot_jobs.demo.view import (
    BreakerView,
    LiveView,
    PlainView,
    Release,
    Snapshot,
    Summary,
    print_summary,
)

#: A moment of the outage: slskd's breaker OPEN, its jobs deferred.
DURING_THE_OUTAGE = Snapshot(
    elapsed=12.5,
    phase="slskd DOWN, back in 3.0 s",
    jobs={"downloading": 3, "deferred": 40, "done": 7},
    total=50,
    breakers=(
        BreakerView("spotify-api", "closed", None, 0),
        BreakerView("slskd-api", "open", 1.25, 4),
        BreakerView("musicbrainz-api", "closed", None, 0),
    ),
    deferred_now={"slskd-api": 40},
    deferrals={"slskd-api": 55, "musicbrainz-api": 2},
    retries=0,
)


def summary(**changes: object) -> Summary:
    values: dict = {
        "tracks": 50,
        "jobs": 51,
        "done": 51,
        "failed": 0,
        "unfinished": 0,
        "deferrals": {"slskd-api": 120, "musicbrainz-api": 3},
        "retries": 0,
        "slskd_failures": 6,
        "failure_threshold": 2,
        "slskd_opened": True,
        "slskd_release": Release(first=0.123, last=0.75, messages=13),
        "outage_seconds": 6.0,
        "wall_seconds": 38.04,
        "worker_log": "/tmp/soulspot-demo-x/worker.log",
        **changes,
    }
    return Summary(**values)


def test_the_live_view_shows_jobs_by_state_breakers_with_retry_after_and_deferred_counts() -> None:
    # Given a terminal
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)

    # When the live view shows a moment of the outage
    with LiveView(console) as view:
        view.show(DURING_THE_OUTAGE)

    # Then the jobs by state, slskd's OPEN breaker with its retry_after and the deferred counts
    # are on screen
    screen = out.getvalue()
    assert "Download jobs (50)" in screen
    assert "deferred" in screen and "40" in screen
    assert "slskd-api" in screen and "open" in screen and "1.2 s" in screen
    assert "waiting now" in screen and "55" in screen
    assert "slskd DOWN, back in 3.0 s" in screen


def test_plain_progress_lines_are_printed_on_change_at_most_once_a_second() -> None:
    # Given output that is not a terminal
    out = io.StringIO()
    view = PlainView(Console(file=out, width=200))

    # When the same moment is shown three times in a row
    for _ in range(3):
        view.show(DURING_THE_OUTAGE)

    # Then it is one line, with the counts, the breaker's state and the deferred jobs
    [line] = out.getvalue().splitlines()
    assert "jobs 50/50: downloading 3, done 7, deferred 40" in line
    assert "slskd-api open (retry after 1.2 s)" in line
    assert "deferred now: slskd-api 40" in line


def test_the_json_summary_is_the_last_line_and_says_whether_every_job_is_done() -> None:
    # Given a run where every job is done and one where a job failed
    for result, ok in ((summary(), True), (summary(done=50, failed=1), False)):
        out = io.StringIO()

        # When the summary is printed with --json
        print_summary(Console(file=out, width=80), result, as_json=True)

        # Then the last line is the summary as JSON
        last = json.loads(out.getvalue().splitlines()[-1])
        assert last["ok"] is ok
        assert last["deferrals_total"] == 123
        assert last["wall_seconds"] == 38.0
        assert last["failed"] == result.failed


def test_the_summary_says_how_soon_deferred_jobs_ran_once_slskd_was_back() -> None:
    # Given a run whose deferred slskd jobs ran 0.12 s to 0.75 s after its breaker closed
    out = io.StringIO()

    # When the summary is printed
    print_summary(Console(file=out, width=160), summary(), as_json=True)

    # Then the table and the JSON say so
    text = out.getvalue()
    assert "slskd breaker closed → first deferred job running" in text
    assert "0.123 s (the last of 13 deferred messages at 0.75 s)" in text
    last = json.loads(text.splitlines()[-1])
    assert last["slskd_release"] == {"first": 0.123, "last": 0.75, "messages": 13}


@pytest.mark.parametrize(
    ("release", "shown"),
    [
        (None, "n/a (not seen closing after it opened)"),
        (Release(first=None, last=None, messages=0), "n/a (no deferred job ran after it)"),
    ],
)
def test_the_summary_says_when_there_was_no_closing_to_measure(
    release: Release | None, shown: str
) -> None:
    out = io.StringIO()
    print_summary(Console(file=out, width=160), summary(slskd_release=release), as_json=False)
    assert shown in out.getvalue()
