"""Fixtures of the operator-command tests: the CLI run in-process or as a process, on the
session's Redis through ``REDIS_URL``, and a real Worker for tests where messages must move."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from typer.testing import CliRunner

from soulspot_jobs import logging as project_logging
from soulspot_jobs.broker import build_broker
from soulspot_jobs.circuit_breaker import Breakers
from soulspot_jobs.deferral.index import DeferredIndex
from soulspot_jobs.operate.cli import app
from soulspot_jobs.settings import load_settings

#: Milliseconds a test worker waits on an empty queue before polling again.
WORKER_TIMEOUT = 50
#: Seconds a CLI process may take before the test fails.
PROCESS_DEADLINE = 30.0


@dataclass
class Outcome:
    """What a CLI run printed and how it exited."""

    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.exit_code == 0, self.stderr
        return json.loads(self.stdout)


Cli = Callable[..., Outcome]


def _drop_log_handler() -> None:
    """The CLI configures logging onto the runner's stderr; detach it once the run is over."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, project_logging._HANDLER_MARK, 0)]:
        root.removeHandler(handler)


@pytest.fixture
def cli(redis_url: str) -> Iterator[Cli]:
    """Run ``soulspot-jobs ARGS`` in-process with ``REDIS_URL`` naming the test Redis."""
    runner = CliRunner()

    def run(*args: str, **env: str) -> Outcome:
        result = runner.invoke(
            app, list(args), env={"REDIS_URL": redis_url, "LOG_FORMAT": "json", **env}
        )
        _drop_log_handler()
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Outcome(result.exit_code, result.stdout, result.stderr)

    yield run
    _drop_log_handler()


def run_process(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``soulspot-jobs ARGS`` as its own process (no REDIS_URL unless ``env`` gives one)."""
    base = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "soulspot_jobs.operate.cli", *args],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROCESS_DEADLINE,
    )


@dataclass
class Jobs:
    """A broker with test actors, and a real Worker consuming it."""

    broker: Any
    worker: dramatiq.Worker

    @property
    def breakers(self) -> Breakers:
        return self.broker.breakers

    @property
    def deferred(self) -> DeferredIndex:
        return self.broker.deferred


@pytest.fixture
def make_worker(redis_url: str) -> Iterator[Callable[[Callable[[RedisBroker], None]], Jobs]]:
    """Build ``build_broker`` on the test Redis, let the test declare its actors, start a Worker.

    The worker is stopped and the broker closed after the test.
    """
    started: list[Jobs] = []

    def make(declare: Callable[[RedisBroker], None], **settings: Any) -> Jobs:
        broker = build_broker(load_settings(REDIS_URL=redis_url, **settings))
        broker.add_middleware(CurrentMessage())
        declare(broker)
        worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=WORKER_TIMEOUT)
        worker.start()
        jobs = Jobs(broker, worker)
        started.append(jobs)
        return jobs

    yield make
    for jobs in started:
        jobs.worker.stop()
        jobs.broker.close()
