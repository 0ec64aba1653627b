"""The README's first command runs this demo: it must finish every job it starts, spend no
retry on the outage, and leave nothing behind, not even when interrupted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import redis

from soulspot_jobs.demo import scenario as demo
from soulspot_jobs.settings import load_settings
from tests.polling import wait_until

#: A short form of the demo: fewer tracks, a shorter outage, the same code path.
SHORT_TRACKS = 6
SHORT_OUTAGE = 2.0
#: Seconds the interrupted demo may take to stop everything it started.
STOP_DEADLINE = 30.0
#: Seconds the demo may take to get its jobs going on this busy machine.
START_DEADLINE = 60.0
#: Seconds from slskd's breaker closing to the first deferred job running, at most.
RELEASE_GOAL = 1.0


def test_the_demo_imports_a_playlist_through_worker_processes_and_survives_an_slskd_outage(
    redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the settings a user has, on the test Redis, logging at INFO
    settings = load_settings(REDIS_URL=redis_url, log_level="INFO")

    # When a short form of the demo runs, its summary asked for as JSON
    status = demo.run(settings, tracks=SHORT_TRACKS, outage=SHORT_OUTAGE, json_summary=True)

    # Then every job is done, the last line of the output says so ...
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert status == 0, out
    assert summary["ok"] is True
    assert summary["jobs"] == summary["done"] == SHORT_TRACKS + 1
    assert summary["failed"] == 0 and summary["unfinished"] == 0
    # ... slskd went down long enough to open its breaker, and its jobs were deferred ...
    assert "slskd goes down" in out and "slskd is back" in out
    assert summary["slskd_opened"] is True
    assert summary["slskd_failures"] >= summary["failure_threshold"]
    assert summary["deferrals"]["slskd-api"] > 0
    # ... the outage cost a Dramatiq retry only for an attempt that ran and failed (the ones that
    # opened the breaker and failed trials, all counted by it): none for a deferred message ...
    assert summary["retries"] <= summary["slskd_failures"]
    # ... it saw slskd's breaker close, and measured how soon a deferred job ran after that
    # (the workers release deferred jobs as it closes: within a second) ...
    release = summary["slskd_release"]
    assert release is not None
    if release["messages"]:
        assert 0 <= release["first"] <= RELEASE_GOAL
        assert release["first"] <= release["last"]
    # ... the worker processes logged to the file the demo named, not over its output ...
    log = Path(summary["worker_log"])
    assert f"logs in {log}" in out
    assert "Worker process is ready for action" in log.read_text()
    shutil.rmtree(log.parent)
    # ... and it left no key in the user's Redis
    assert redis_client.dbsize() == 0


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _left_behind(processes: list[psutil.Process]) -> list[str]:
    """Processes of ``processes`` still running (the same process, not a reused pid)."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{process.pid} {' '.join(process.cmdline())}")
        except psutil.NoSuchProcess:
            continue
    return alive


def test_ctrl_c_during_the_demo_stops_every_process_it_started(tmp_path: Path) -> None:
    # Given the demo command running on its embedded Redis, its jobs under way
    env = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
    env["TMPDIR"] = str(tmp_path)  # the worker log and the embedded Redis go under tmp_path
    command = [sys.executable, "-m", "soulspot_jobs.operate.cli", "demo"]
    options = ["--tracks", str(SHORT_TRACKS), "--outage", "30"]
    process = subprocess.Popen(
        [*command, *options],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_until(
            lambda: any("download jobs enqueued" in line for line in lines),
            "the demo's jobs to be under way",
            START_DEADLINE,
        )
        started = _descendants(process.pid)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert "redis-server" in names and "dramatiq" in names, names
        workers = [p for p in started if "dramatiq" in " ".join(p.cmdline())]
        assert len(workers) >= 3, names  # the worker command and its two worker processes

        # When Ctrl-C reaches it (SIGINT, as a terminal sends to its foreground process)
        os.kill(process.pid, signal.SIGINT)
        status = process.wait(STOP_DEADLINE)
        reader.join(STOP_DEADLINE)

        # Then it says so, exits 130 and no process it started is left
        assert status == demo.EXIT_INTERRUPTED, "".join(lines)
        assert any("Interrupted" in line for line in lines), "".join(lines)
        assert _left_behind(started) == []
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
