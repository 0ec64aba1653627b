"""Nothing grows forever: after jobs finish, every key has a TTL or a documented owner."""

from __future__ import annotations

import redis

from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.spotify import DEMO_PLAYLIST
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import FINAL_STATES, JobState
from soulspot_jobs.settings import Settings
from tests.jobs.conftest import JOB_DEADLINE, Fakes, running, settings_for
from tests.polling import wait_until

DAFT_PUNK = CATALOG[0]


def run_every_kind_of_job(app: SoulspotJobs, fakes: Fakes) -> list[str]:
    """A download (deferred once by slskd's back-pressure), an enrichment and a playlist import,
    all run to done on a real worker; returns every job id, the playlist's tracks included.

    A record seen done counts as done even if it has expired since (short TTLs)."""
    fakes.slskd.busy_searches(1)
    states: dict[str, JobState] = {}

    def all_done(ids: list[str]) -> bool:
        for job_id in ids:
            job = app.job(job_id)
            if job is not None and job.state in FINAL_STATES:
                states.setdefault(job_id, job.state)
        return set(ids) <= set(states)

    with running(app):
        ids = [
            app.enqueue_download(f"{DAFT_PUNK.artist} - {DAFT_PUNK.title}"),
            app.enqueue_enrichment(isrc=DAFT_PUNK.isrc),
        ]
        playlist_id = app.enqueue_playlist(DEMO_PLAYLIST)
        wait_until(lambda: app.job(playlist_id).state in FINAL_STATES, "the playlist import")
        ids += [playlist_id, *app.job(playlist_id).details["jobs"]]
        wait_until(lambda: all_done(ids), "every job to finish", JOB_DEADLINE)
    assert [states[job_id] for job_id in ids] == [JobState.DONE] * len(ids), states
    return ids


def with_job_ttl(settings: Settings, seconds: float) -> Settings:
    return settings.model_copy(update={"job_ttl": seconds})


def test_after_jobs_finish_every_key_has_a_ttl_or_is_a_documented_persistent_key(
    redis_url: str, redis_client: redis.Redis, fakes: Fakes
) -> None:
    # Given every kind of job run to the end, one of them deferred on the way
    app = SoulspotJobs(with_job_ttl(settings_for(redis_url, fakes), 600))
    keys = app.keys
    run_every_kind_of_job(app, fakes)

    # When the whole keyspace is scanned
    found = sorted(key.decode() for key in redis_client.scan_iter(count=1000))
    ttls = {key: redis_client.pttl(key) for key in found}

    # Then every key belongs to a documented family, every key without a TTL is one of the
    # documented persistent keys, and the deferral's index keys carry their TTL
    undocumented = [key for key in found if keys.family_of(key) is None]
    assert undocumented == []
    no_ttl = [key for key in found if ttls[key] == -1]
    assert [key for key in no_ttl if not keys.family_of(key).persistent] == []
    assert keys.deferred_services in found
    assert ttls[keys.deferred_services] > 7 * 24 * 3600 * 1000
    records = [key for key in found if key.startswith(keys.job(""))]
    assert records and all(0 < ttls[key] <= 600_000 for key in records)


def test_finished_job_records_expire_after_the_job_ttl_and_leave_the_index(
    redis_url: str, redis_client: redis.Redis, fakes: Fakes
) -> None:
    # Given every kind of job run to the end with a job TTL of two seconds
    app = SoulspotJobs(with_job_ttl(settings_for(redis_url, fakes), 2.0))
    keys = app.keys
    ids = run_every_kind_of_job(app, fakes)
    assert redis_client.zcard(keys.job_index) == len(ids)

    # When the TTL has passed
    def records_left() -> list[bytes]:
        return list(redis_client.scan_iter(match=keys.job("*"), count=1000))

    wait_until(lambda: records_left() == [], "the job records to expire", timeout=10)

    # Then no record is left, and listing the jobs trims the index of every expired id
    store = SoulspotJobs(app.settings).store
    assert store.jobs() == []
    assert redis_client.zcard(keys.job_index) == 0
