"""Load: a backlog of download jobs through two worker processes, with an slskd outage midway.

Usage: ``python -m bench.load [--jobs N] [--processes P] [--threads T] [--outage-at S]
[--outage S] [--job-ttl S]``

One embedded Redis; the fake slskd and MusicBrainz in this process, with short durations (a
search completes after 0.5 s, a transfer after 0.5 s, polls every 0.5 s, no MusicBrainz rate
rule), both knowing N made-up songs; N download jobs, one per song, enqueued before the
workers start (each the real chain: search, search polls, download, download polls, MusicBrainz
lookup); then ``dramatiq soulspot_jobs.worker -p P -t T`` as a subprocess. ``--outage-at``
seconds after the workers start (and not before the first job is done, which the outage would
otherwise delay), slskd answers 503 for ``--outage`` seconds: the breaker opens, slskd steps are
deferred, then it recovers.

Printed: jobs/s, time to the first job done, peak RSS of each worker process, Redis
``used_memory`` before, after the run (finished records retained) and once the records expired
(``--job-ttl``) and the index was trimmed, and the deferrals, breaker failures and refusals seen.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
import redis

from bench._harness import quiet_logs
from soulspot_jobs.embedded.server import EmbeddedRedis
from soulspot_jobs.fakes.catalog import generated_catalog
from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.fakes.slskd import FakeSlskd
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import FINAL_STATES
from soulspot_jobs.settings import load_settings

#: Seconds a fake search runs, a fake transfer takes, and between two polls of either.
SEARCH_DURATION = TRANSFER_DURATION = POLL_INTERVAL = 0.5
#: Seconds the slskd breaker stays OPEN before its trial (the default 60 s outlasts the run).
BREAKER_TIMEOUT = 5.0
#: Seconds between two looks at the workers' memory (and, until one is done, at the oldest jobs).
SAMPLE_INTERVAL = 0.25
#: Oldest pending jobs looked at every ``SAMPLE_INTERVAL`` until one is done: jobs start in
#: order, so the first one done is among them (if it were not, the time measured would only be
#: later than the truth).
FIRST_SAMPLE = 500
#: Seconds between two looks at every pending job, once one is done.
FULL_SAMPLE_INTERVAL = 2.0
#: Job records read per pipeline while watching progress.
CHUNK = 5_000
#: Longest the run may take, in seconds.
RUN_DEADLINE = 900.0
#: Target of the design: the first job is done this many seconds after the workers start.
FIRST_DONE_TARGET = 15.0
#: Target: Redis memory after the run is within this fraction of baseline + retained records.
MEMORY_TOLERANCE = 0.10
SERVICES = ("slskd-api", "musicbrainz-api")


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def worker_env(redis_url: str, slskd: FakeSlskd, musicbrainz: FakeMusicBrainz, ttl: float) -> dict:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "SLSKD_URL": slskd.url,
        "SLSKD_API_KEY": slskd.api_key,
        "SLSKD_SEARCH_POLL_INTERVAL": str(POLL_INTERVAL),
        "SLSKD_DOWNLOAD_POLL_INTERVAL": str(POLL_INTERVAL),
        "MUSICBRAINZ_URL": musicbrainz.url,
        "MUSICBRAINZ_MIN_INTERVAL": "0.0001",
        "CIRCUIT_BREAKER_TIMEOUT": str(BREAKER_TIMEOUT),
        "SOULSPOT_JOB_TTL": str(ttl),
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
    }


class Progress:
    """Job states read from Redis; a record that expired was finished (only those expire)."""

    def __init__(self, client: redis.Redis, app: SoulspotJobs, job_ids: list[str]) -> None:
        self.client, self.app = client, app
        self.pending = list(job_ids)
        self.states: Counter[str] = Counter()
        self.first_done_at: float | None = None
        self.last_final_at: float | None = None

    def sample(self, now: float, limit: int | None = None) -> None:
        """Read the state of the ``limit`` oldest pending jobs (all when ``None``)."""
        looked_at, rest = self.pending[:limit], self.pending[len(self.pending[:limit]) :]
        still = []
        for start in range(0, len(looked_at), CHUNK):
            chunk = looked_at[start : start + CHUNK]
            pipe = self.client.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hget(self.app.store.key(job_id), "state")
            for job_id, raw in zip(chunk, pipe.execute(), strict=True):
                state = "expired" if raw is None else raw.decode().strip('"')
                if state in FINAL_STATES or state == "expired":
                    self.states[state] += 1
                    self.last_final_at = now
                    if state == "done" and self.first_done_at is None:
                        self.first_done_at = now
                else:
                    still.append(job_id)
        self.pending = still + rest


class PeakRss:
    """Peak resident memory of each worker process (the children of the ``dramatiq`` command)."""

    def __init__(self, command: subprocess.Popen) -> None:
        self.parent = psutil.Process(command.pid)
        self.peaks: dict[int, int] = {}

    def sample(self) -> None:
        try:
            children = self.parent.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for child in children:
            try:
                rss = child.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            self.peaks[child.pid] = max(self.peaks.get(child.pid, 0), rss)


def run(options: argparse.Namespace) -> None:
    log_path = Path(tempfile.mkdtemp(prefix="soulspot-load-")) / "workers.log"
    catalog = generated_catalog(options.jobs)
    with (
        EmbeddedRedis() as server,
        FakeSlskd(
            catalog=catalog, search_duration=SEARCH_DURATION, transfer_duration=TRANSFER_DURATION
        ) as slskd,
        FakeMusicBrainz(catalog=catalog, min_interval=0) as musicbrainz,
    ):
        client = redis.Redis.from_url(server.url)
        baseline = used_memory(client)
        app = SoulspotJobs(load_settings(REDIS_URL=server.url, job_ttl=options.job_ttl))

        # The backlog: every job enqueued before the workers start.
        tracks = [f"{track.artist} - {track.title}" for track in catalog]
        enqueue_start = time.perf_counter()
        job_ids = [app.enqueue_download(track) for track in tracks]
        enqueue_s = time.perf_counter() - enqueue_start
        backlog_memory = used_memory(client)

        env = worker_env(server.url, slskd, musicbrainz, options.job_ttl)
        command = [sys.executable, "-m", "dramatiq", "soulspot_jobs.worker"]
        command += ["-p", str(options.processes), "-t", str(options.threads)]
        with log_path.open("wb") as log:
            workers = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        start = time.perf_counter()
        progress, rss = Progress(client, app, job_ids), PeakRss(workers)
        outage_started, outage_at = False, float("nan")
        peak_memory = backlog_memory
        next_full_sample = 0.0
        try:
            while progress.pending:
                now = time.perf_counter() - start
                if now > RUN_DEADLINE:
                    raise TimeoutError(f"{len(progress.pending)} jobs unfinished after {now:.0f} s")
                first_done = progress.first_done_at is not None
                if not outage_started and first_done and now >= options.outage_at:
                    slskd.faults.outage(options.outage, mode="503")
                    outage_started, outage_at = True, now
                if progress.first_done_at is None:
                    progress.sample(now, FIRST_SAMPLE)
                elif now >= next_full_sample:
                    progress.sample(now)
                    next_full_sample = now + FULL_SAMPLE_INTERVAL
                rss.sample()
                peak_memory = max(peak_memory, used_memory(client))
                time.sleep(SAMPLE_INTERVAL)
        finally:
            workers.send_signal(signal.SIGTERM)
            workers.wait(60)
        run_s = progress.last_final_at or 0.0
        # After the run: records whose TTL passed are reclaimed (Redis does it lazily and in its
        # expiry cycle; SCAN reclaims those it meets), and the index trimmed of them (as the
        # next finishing job would); what is left is the retained records and their index.
        records = [key for key in client.scan_iter(f"{app.store.prefix}:job:*", count=5000)]
        while app.store.trim_index():
            pass
        after_run = used_memory(client)
        pipe = client.pipeline(transaction=False)
        for key in records:
            pipe.memory_usage(key, samples=0)
        retained = sum(size or 0 for size in pipe.execute())
        retained += client.memory_usage(app.store.index_key, samples=0) or 0

        # Wait out the TTL of the last records, then trim the index as a finishing job would.
        expire_start = time.perf_counter()
        while next(client.scan_iter(f"{app.store.prefix}:job:*", count=5000), None) is not None:
            if time.perf_counter() - expire_start > options.job_ttl + 30:
                raise TimeoutError("job records did not expire")
            time.sleep(0.5)
        while app.store.trim_index():
            pass
        after_expiry = used_memory(client)
        keys_left = sorted(key.decode() for key in client.scan_iter(count=1000))
        left_memory = sum(client.memory_usage(key, samples=0) or 0 for key in keys_left)
        stats = {service: app.breakers[service].stats for service in SERVICES}
        app.close()
        client.close()

    # Our JSON lines only (the worker command also prints Dramatiq's own copy of each record).
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line[:1] == "{"]
    deferred = [line for line in lines if '"job.deferred"' in line]
    deferrals = Counter("refused" if "Circuit breaker" in line else "busy" for line in deferred)
    deferrals["opened"] = sum('"circuit_breaker.opened"' in line for line in lines)
    exceeded = sum("Retries exceeded" in line for line in log_path.read_text().splitlines())
    report(
        options, enqueue_s, run_s, progress, rss, deferrals, exceeded, stats,
        memory=(baseline, backlog_memory, peak_memory, after_run, retained, after_expiry),
        left_memory=left_memory, records_kept=len(records),
        keys_left=keys_left, log_path=log_path, outage_at=outage_at,
    )  # fmt: skip


def report(
    options: argparse.Namespace,
    enqueue_s: float,
    run_s: float,
    progress: Progress,
    rss: PeakRss,
    deferrals: Counter[str],
    exceeded: int,
    stats: dict,
    *,
    memory: tuple[int, ...],
    keys_left: list[str],
    log_path: Path,
    outage_at: float,
    left_memory: int,
    records_kept: int,
) -> None:
    baseline, backlog, peak, after_run, retained, after_expiry = memory
    mb = 1024 * 1024
    n = options.jobs
    first = progress.first_done_at
    print(
        f"jobs: {n} downloads, {options.processes} worker processes x {options.threads} threads,"
        f" slskd down (503) from {outage_at:.1f} s for {options.outage:.0f} s,"
        f" job TTL {options.job_ttl:.0f} s; worker log: {log_path}"
    )
    print(f"states: {dict(progress.states)}")
    ok = "PASS" if first is not None and first <= FIRST_DONE_TARGET else "FAIL"
    rows = [
        ("enqueue the backlog", f"{enqueue_s:.1f} s ({n / enqueue_s:,.0f} jobs/s)"),
        ("all jobs finished after", f"{run_s:.1f} s"),
        ("throughput", f"{n / run_s:,.0f} jobs/s"),
        (
            "first job done after",
            f"{first:.1f} s (target <= {FIRST_DONE_TARGET:.0f} s) {ok}" if first else "never",
        ),
        (
            "peak RSS per worker process",
            ", ".join(f"{peak_rss / mb:.0f} MB" for peak_rss in sorted(rss.peaks.values())),
        ),
        (
            "deferrals (`job.deferred` log lines)",
            f"{deferrals['refused'] + deferrals['busy']:,}: {deferrals['refused']:,} refused by"
            f" an OPEN or HALF_OPEN breaker, {deferrals['busy']:,} slskd back-pressure"
            f" (429 while another search starts)",
        ),
        ("breaker openings (`circuit_breaker.opened`)", str(deferrals["opened"])),
    ]
    for service, s in stats.items():
        rows.append(
            (
                f"{service} breaker",
                f"{s.total_failures} failures counted,"
                f" {s.total_rejections:,} refusals, now {s.state.value}",
            )
        )
    rows.append(("messages out of retries", str(exceeded)))
    expected = baseline + retained
    ok = "PASS" if after_run <= expected * (1 + MEMORY_TOLERANCE) else "FAIL"
    rows += [
        ("Redis used_memory: before", f"{baseline / mb:.1f} MB"),
        ("with the backlog queued", f"{backlog / mb:.1f} MB (peak of the run {peak / mb:.1f} MB)"),
        (
            "after the run",
            f"{after_run / mb:.1f} MB; retained records and index {retained / mb:.1f} MB"
            f" ({records_kept:,} records);"
            f" baseline + retained {expected / mb:.1f} MB (within {MEMORY_TOLERANCE:.0%}) {ok}",
        ),
        (
            "after the records expired",
            f"{after_expiry / mb:.2f} MB ({after_expiry / baseline:.2f}x the baseline of"
            f" {baseline / mb:.2f} MB; keys left {left_memory / 1024:.0f} KB, the rest not keys)",
        ),
        ("keys left", ", ".join(keys_left)),
    ]  # fmt: skip
    print()
    print("| metric | value |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--outage-at", type=float, default=10.0, help="seconds after start")
    parser.add_argument("--outage", type=float, default=15.0, help="seconds slskd is down")
    parser.add_argument("--job-ttl", type=float, default=30.0, help="SOULSPOT_JOB_TTL, seconds")
    options = parser.parse_args()
    quiet_logs()
    run(options)


if __name__ == "__main__":
    main()
