"""The fault suite's stage: real ``dramatiq soulspot_jobs.worker`` processes, a real
``redis-server`` (one per test, so that a test may crash or restart it) and the fake upstreams.

Every test records one line of figures (fault, jobs lost, duplicates seen, time to recover);
they are printed at the end of the session (``-s``, or in the ``-rA`` summary) and are the
figures of the fault table in docs/crash-recovery.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from soulspot_jobs.embedded.server import EmbeddedRedis
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.fakes.slskd import FakeSlskd
from soulspot_jobs.fakes.spotify import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakeSpotify
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import FINAL_STATES, JobState
from soulspot_jobs.settings import load_settings
from tests.polling import wait_until

#: Seconds between two requests the fake MusicBrainz accepts; the workers keep 1.5 times that.
MUSICBRAINZ_INTERVAL = 0.1
#: Seconds a worker command may take to start (import, fork, first heartbeat).
START_DEADLINE = 30.0
#: Seconds a worker command may take to stop after SIGTERM.
STOP_DEADLINE = 20.0
#: Dramatiq's namespace under the default key prefix.
NAMESPACE = "soulspot:dramatiq"


@dataclass
class Figures:
    """What one fault cost: one row of docs/crash-recovery.md's fault table."""

    fault: str
    jobs: int
    lost: int
    duplicates: int
    recovered_in: float
    notes: str = ""

    def row(self) -> str:
        return (
            f"| {self.fault} | {self.lost} of {self.jobs} | {self.duplicates} | "
            f"{self.recovered_in:.1f} s | {self.notes} |"
        )


_FIGURES: list[Figures] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("fault figures")
        terminalreporter.write_line("| fault | jobs lost | duplicates seen | time to recover | |")
        for figures in _FIGURES:
            terminalreporter.write_line(figures.row())


@dataclass
class Stage:
    """Redis, the fakes and the worker commands of one fault test."""

    redis: EmbeddedRedis
    slskd: FakeSlskd
    musicbrainz: FakeMusicBrainz
    spotify: FakeSpotify
    logs: Path
    env: dict[str, str]
    commands: list[subprocess.Popen[bytes]] = field(default_factory=list)
    broker_ids: dict[int, set[bytes]] = field(default_factory=dict)
    producer: SoulspotJobs | None = None

    def start_workers(self, *, processes: int = 1, threads: int = 4) -> subprocess.Popen[bytes]:
        """Start ``dramatiq soulspot_jobs.worker``; return once its processes heartbeat.

        The command's broker ids are in ``self.broker_ids[command.pid]``.
        """
        before = self.heartbeats()
        log = open(self.logs / f"worker-{len(self.commands)}.log", "wb")  # noqa: SIM115
        command = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dramatiq",
                "soulspot_jobs.worker",
                "--processes",
                str(processes),
                "--threads",
                str(threads),
            ],  # fmt: skip
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.commands.append(command)
        wait_until(
            lambda: len(self.heartbeats() - before) >= processes,
            "the worker processes' first heartbeats",
            START_DEADLINE,
        )
        self.broker_ids[command.pid] = self.heartbeats() - before
        return command

    def held_by(self, command: subprocess.Popen[bytes]) -> int:
        """Messages in the ack sets of ``command``'s worker processes (fetched, not acked)."""
        client = redis.Redis.from_url(self.redis.url)
        try:
            return sum(
                client.scard(key)
                for broker_id in self.broker_ids[command.pid]
                for key in client.scan_iter(f"{NAMESPACE}:__acks__.{broker_id.decode()}.*")
            )
        finally:
            client.close()

    def restart_redis(self, down_for: float) -> None:
        """Stop Redis (SHUTDOWN: the append-only file is flushed), keep it down ``down_for``
        seconds (the fault itself, not a wait for something), start it again on its port."""
        port, data_dir = self.redis.port, self.redis.data_dir
        self.redis.stop()
        time.sleep(down_for)
        self.redis = EmbeddedRedis(port=port, appendonly=True, data_dir=data_dir).start()

    def refuse_writes(self, how: str) -> None:
        """Make Redis refuse writes as it does in production: ``"oom"``, ``maxmemory`` below
        what it uses under ``noeviction``; ``"misconf"``, a snapshot that failed to reach the
        disk (``stop-writes-on-bgsave-error``), as when the disk is full."""
        client = redis.Redis.from_url(self.redis.url)
        try:
            if how == "oom":
                client.config_set("maxmemory-policy", "noeviction")
                client.config_set("maxmemory", 1)  # bytes: less than any Redis uses
            else:
                gone = self.logs / "gone"
                gone.mkdir()
                client.config_set("stop-writes-on-bgsave-error", "yes")
                client.config_set("save", "3600 1")  # only a server that saves refuses
                client.config_set("dir", str(gone))
                gone.rmdir()  # the snapshot cannot be written where Redis now works
                client.bgsave()
                wait_until(
                    lambda: client.info("persistence")["rdb_last_bgsave_status"] == "err",
                    "the snapshot to fail",
                )
        finally:
            client.close()

    def accept_writes(self) -> None:
        """Free what :meth:`refuse_writes` took: memory, or a disk that takes the snapshot."""
        client = redis.Redis.from_url(self.redis.url)
        try:
            client.config_set("maxmemory", 0)
            if client.info("persistence")["rdb_last_bgsave_status"] == "err":
                client.config_set("dir", str(self.redis.data_dir))
                client.config_set("save", "")
                client.bgsave()
                wait_until(
                    lambda: client.info("persistence")["rdb_last_bgsave_status"] == "ok",
                    "a snapshot on the disk",
                )
        finally:
            client.close()

    def heartbeats(self) -> set[bytes]:
        """Broker ids whose heartbeat is fresh (the last 2 s)."""
        now = int(time.time() * 1000)
        client = redis.Redis.from_url(self.redis.url)
        try:
            return set(client.zrangebyscore(f"{NAMESPACE}:__heartbeats__", now - 2000, "+inf"))
        finally:
            client.close()

    def enqueue_downloads(self, count: int) -> list[str]:
        self.producer = self.producer or SoulspotJobs(load_settings(REDIS_URL=self.redis.url))
        tracks = [CATALOG[n % len(CATALOG)] for n in range(count)]
        return [self.producer.enqueue_download(f"{t.artist} - {t.title}") for t in tracks]

    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        assert self.producer is not None
        return {job_id: self.producer.job(job_id).state for job_id in job_ids}

    def wait_all_final(self, job_ids: list[str], timeout: float) -> float:
        """Wait until every job is done or failed; the seconds it took."""
        started = time.monotonic()
        try:
            wait_until(
                lambda: all(s in FINAL_STATES for s in self.states(job_ids).values()),
                f"{len(job_ids)} jobs to finish",
                timeout,
            )
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}\n{self.whereabouts(job_ids)}") from None
        return time.monotonic() - started

    def whereabouts(self, job_ids: list[str]) -> str:
        """Each unfinished job's record and where its messages are (queues, delay queues, ack
        sets, dead letters): the first thing to read when a job is stranded."""
        assert self.producer is not None
        client = redis.Redis.from_url(self.redis.url)
        try:
            places: dict[str, list[str]] = {}
            for key in client.scan_iter(f"{NAMESPACE}:*.msgs"):
                queue = key.decode().removeprefix(f"{NAMESPACE}:").removesuffix(".msgs")
                acks = list(client.scan_iter(f"{NAMESPACE}:__acks__.*.{queue}"))
                for redis_id, raw in client.hscan_iter(key):
                    message = json.loads(raw)
                    owners = [
                        k.decode().split(".")[1] for k in acks if client.sismember(k, redis_id)
                    ]
                    where = f"{queue}:{message['actor_name']}"
                    where += f" in the ack sets of {owners}" if owners else ""
                    places.setdefault((message.get("args") or [""])[0], []).append(where)
            lines = []
            for job_id in job_ids:
                job = self.producer.job(job_id)
                if job is None or job.state in FINAL_STATES:
                    continue
                lines.append(
                    f"{job_id} {job.state.value} idle {time.time() - job.updated_at:.0f} s "
                    f"last_error={job.last_error!r} messages={places.get(job_id, [])}"
                )
            return "unfinished jobs:\n" + "\n".join(lines)
        finally:
            client.close()

    def lost(self, job_ids: list[str]) -> int:
        """Jobs not done (failed or never finished)."""
        return sum(1 for s in self.states(job_ids).values() if s is not JobState.DONE)

    def duplicates(self, job_ids: list[str]) -> int:
        """Searches started and downloads enqueued at slskd beyond one of each per job: the
        steps that ran twice (the other steps only read)."""
        searches = len(self.slskd.search_requests)
        transfers = len(self.slskd._transfers)
        return max(0, searches - len(job_ids)) + max(0, transfers - len(job_ids))

    def record(self, figures: Figures) -> None:
        _FIGURES.append(figures)
        print(figures.row())

    def stop(self) -> None:
        if self.producer is not None:
            self.producer.close()
        for command in self.commands:
            if command.poll() is None:
                command.send_signal(signal.SIGTERM)
        for command in self.commands:
            try:
                command.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                command.kill()
                command.wait()
        for child in _orphaned_children:
            _kill(child)

    def log_text(self) -> str:
        """Everything the worker commands wrote."""
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.logs.glob("worker-*.log"))
        )

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.logs.glob("worker-*.log")):
            out.append(f"== {path.name}")
            out += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)


#: Worker processes killed or left behind by a test, killed at its end.
_orphaned_children: list[int] = []


def worker_processes(command: subprocess.Popen[bytes]) -> list[int]:
    """Process ids of the worker processes the ``dramatiq`` command forked (Linux)."""
    path = Path(f"/proc/{command.pid}/task/{command.pid}/children")
    pids = [int(pid) for pid in path.read_text().split()]
    _orphaned_children.extend(pids)
    return pids


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def worker_env(
    redis_url: str, slskd: FakeSlskd, musicbrainz: FakeMusicBrainz, spotify: FakeSpotify
) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLSKD_", "RECOVERY_"))},
        "REDIS_URL": redis_url,
        "SLSKD_URL": slskd.url,
        "SLSKD_API_KEY": "test-key",
        "SLSKD_SEARCH_POLL_INTERVAL": "0.3",
        "SLSKD_DOWNLOAD_POLL_INTERVAL": "0.5",
        "MUSICBRAINZ_URL": musicbrainz.url,
        "MUSICBRAINZ_MIN_INTERVAL": str(1.5 * MUSICBRAINZ_INTERVAL),
        "SPOTIFY_API_URL": spotify.url,
        "SPOTIFY_ACCOUNTS_URL": spotify.url,
        "SPOTIFY_CLIENT_ID": DEFAULT_CLIENT_ID,
        "SPOTIFY_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
    }


@pytest.fixture
def stage(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stage]:
    """A fresh Redis with an append-only file, the three fakes, and no workers yet."""
    with (
        EmbeddedRedis(appendonly=True, data_dir=tmp_path / "redis") as server,
        FakeSlskd(search_duration=1.0, transfer_duration=2.0) as slskd,
        FakeMusicBrainz(min_interval=MUSICBRAINZ_INTERVAL) as musicbrainz,
        FakeSpotify() as spotify,
    ):
        logs = tmp_path / "logs"
        logs.mkdir()
        built = Stage(
            server, slskd, musicbrainz, spotify, logs,
            worker_env(server.url, slskd, musicbrainz, spotify),
        )  # fmt: skip
        try:
            yield built
        finally:
            built.stop()
            built.redis.stop()
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                print(built.log_tail())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
