"""``dead-letters``, ``dead-letters requeue ID|--all`` and ``dead-letters delete ID|--all``:
messages that ran out of retries or of deferral budget are listed with their reason, requeued
ones run (with a real Worker), malformed ones are not requeued, deleted ones are gone."""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from prometheus_client import generate_latest

from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.deferral.dead_letters import DeadLetters
from soulspot_jobs.deferral.reasons import DeadLetterReasons
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState, JobStore
from soulspot_jobs.keys import Keys
from soulspot_jobs.operate.metrics import registry_for
from soulspot_jobs.settings import load_settings
from tests.polling import wait_until

from .conftest import Cli

#: Seconds any wait for a message may take before the test fails.
DEADLINE = 20.0
#: The dead letters of the jobs' ``default`` queue, with the default key prefix.
XQ = "soulspot:dramatiq:default.XQ"


class Recorder:
    """What the test actors saw: options of each message that ran, by argument."""

    def __init__(self) -> None:
        self.healed = threading.Event()
        self.ran: dict[int, dict[str, Any]] = {}
        self.changed = threading.Condition()

    def record(self, n: int) -> None:
        with self.changed:
            self.ran[n] = dict(CurrentMessage.get_current_message().options)
            self.changed.notify_all()

    def wait_for(self, n: int) -> dict[str, Any]:
        with self.changed:
            assert self.changed.wait_for(lambda: n in self.ran, DEADLINE), f"message {n} ran"
            return self.ran[n]


def test_dead_letters_show_the_reason_and_requeued_ones_run_afresh(cli: Cli, make_worker) -> None:
    recorder = Recorder()

    def declare(broker: RedisBroker) -> None:
        @dramatiq.actor(
            broker=broker, queue_name="jobs", max_retries=1, min_backoff=10, max_backoff=10
        )
        def flaky(n: int) -> None:
            if not recorder.healed.is_set():
                raise RuntimeError(f"boom {n}")
            recorder.record(n)

        @dramatiq.actor(broker=broker, queue_name="jobs", service="spotify-api", max_deferral=1000)
        def sync(n: int) -> None:
            recorder.record(n)

    # Given Spotify forced OPEN, a worker, a message that fails twice (its one retry included)
    # and a message that has been deferred for a minute already (its budget is one second)
    cli("open", "spotify", "--for", "300")
    jobs = make_worker(declare)
    failing = jobs.broker.get_actor("flaky").send(1).message_id
    overdue = (
        jobs.broker.get_actor("sync")
        .send_with_options(
            args=(2,), circuit_breaker_first_deferred_at=int(time.time() * 1000) - 60_000
        )
        .message_id
    )
    letters = DeadLetters(jobs.broker)
    wait_until(lambda: letters.counts() == {"jobs": 2}, "two dead letters", DEADLINE)

    # When the dead letters are listed
    listed = {letter["message_id"]: letter for letter in cli("dead-letters", "--json").json()}
    text = cli("dead-letters").stdout.splitlines()

    # Then each shows its actor, queue, when, and why: the breaker's reason, or Dramatiq's
    # retries exhausted with the last line of the traceback
    assert set(listed) == {failing, overdue}
    assert listed[overdue]["actor"] == "sync" and listed[overdue]["queue"] == "jobs"
    assert listed[overdue]["reason"].startswith("deferred 0 times over 60.")
    assert "by circuit breaker spotify-api, past the budget of 1.0 s" in listed[overdue]["reason"]
    assert listed[failing]["reason"] == "retries exhausted after 1 retries: RuntimeError: boom 1"
    assert listed[failing]["dead_lettered_at"] <= time.time() * 1000
    assert text[0].split() == ["message_id", "actor", "queue", "dead_lettered", "reason"]
    assert any(line.startswith(failing) and line.endswith("boom 1") for line in text)

    # When Spotify is back and the overdue message is requeued by id
    cli("reset", "spotify")
    view = jobs.breakers.backend._views["spotify-api"]  # the worker's own view follows
    wait_until(lambda: view.state is CircuitState.CLOSED, "the worker to see it CLOSED")
    requeued = cli("dead-letters", "requeue", overdue, "--json").json()

    # Then it runs, as a fresh message: no breaker history, no dead-letter reason, no retries
    assert requeued == {"requeued": [overdue], "skipped": []}
    options = recorder.wait_for(2)
    assert not [name for name in options if name.startswith("circuit_breaker_")]
    assert options.get("retries", 0) == 0
    assert letters.counts() == {"jobs": 1}

    # When the failing actor is fixed and every dead letter is requeued
    recorder.healed.set()
    result = cli("dead-letters", "requeue", "--all")

    # Then the last one runs too, without its old retries and traceback, and none is left
    assert result.stdout.splitlines()[-1] == "1 message(s) requeued"
    options = recorder.wait_for(1)
    assert options.get("retries", 0) == 0
    assert "traceback" not in options
    assert cli("dead-letters", "--json").json() == []


@pytest.mark.parametrize("verb", ["requeue", "delete"])
def test_requeue_or_delete_of_an_unknown_id_is_one_line_and_exit_1(
    cli: Cli, redis_url: str, verb: str
) -> None:
    result = cli("dead-letters", verb, "no-such-message")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"using Redis at {redis_url}",
        "error: no dead-lettered message 'no-such-message'",
    ]


@pytest.mark.parametrize("verb", ["requeue", "delete"])
def test_requeue_and_delete_need_an_id_or_all_but_not_both(cli: Cli, verb: str) -> None:
    for args in (("dead-letters", verb), ("dead-letters", verb, "x", "--all")):
        result = cli(*args)
        assert result.exit_code == 2
        assert result.stderr.startswith(f"error: dead-letters {verb} needs a message id or --all")


def test_an_undecodable_dead_letter_is_listed_with_why_and_cannot_be_requeued(
    cli: Cli, redis_client: redis.Redis
) -> None:
    # Given a dead-letter queue holding a payload no encoder can read
    xq = "soulspot:dramatiq:jobs.XQ"
    redis_client.zadd(xq, {"garbage": 1})
    redis_client.hset(f"{xq}.msgs", "garbage", b"\x00not json")

    # When the dead letters are listed, and it is requeued
    listed = cli("dead-letters", "--json").json()
    requeued = cli("dead-letters", "requeue", "garbage")

    # Then the listing shows it with why it cannot be read, and the requeue says no in one line
    [letter] = listed
    assert letter["message_id"] == "garbage"
    assert letter["reason"].startswith("undecodable: ")
    assert requeued.exit_code == 1
    assert "cannot be decoded" in requeued.stderr
    assert redis_client.zcard(xq) == 1


def test_requeue_all_skips_malformed_dead_letters_saying_why_and_leaves_them(
    cli: Cli, redis_client: redis.Redis
) -> None:
    # Given a payload no encoder can read, and a job step dead-lettered for naming no job
    redis_client.zadd(XQ, {"garbage": 1})
    redis_client.hset(f"{XQ}.msgs", "garbage", b"\x00not json")
    orphan = _dead_letter(redis_client, "search_track", "no-such-job", at=2)
    DeadLetterReasons(redis_client, Keys()).record(orphan, "malformed: no job record 'no-such-job'")

    # When every dead letter is requeued
    result = cli("dead-letters", "requeue", "--all")

    # Then each malformed one is skipped with why, none is requeued (exit 1), and both stay
    lines = result.stdout.splitlines()
    assert lines[0].startswith("skipped garbage: malformed (undecodable: ")
    assert lines[1] == f"skipped {orphan}: malformed (no job record 'no-such-job')"
    assert lines[2] == "0 message(s) requeued"
    assert result.exit_code == 1
    assert redis_client.zcard(XQ) == 2

    # And with a good dead letter beside them, that one is requeued and the command exits 0
    good = _dead_letter(redis_client, "search_track", "some-job", at=3)
    result = cli("dead-letters", "requeue", "--all", "--json")
    assert result.exit_code == 0
    outcome = result.json()
    assert outcome["requeued"] == [good]
    assert [entry["message_id"] for entry in outcome["skipped"]] == ["garbage", orphan]
    assert redis_client.zcard(XQ) == 2


def test_delete_removes_a_dead_letter_and_its_job_stays_failed_with_the_deletion_noted(
    cli: Cli, redis_client: redis.Redis
) -> None:
    # Given a failed download job whose search step is in the dead letters, and another letter
    store = JobStore(redis_client)
    job = store.create("download", query="A - B")
    store.update(job.id, state=JobState.FAILED, last_error="dead-lettered: past the budget")
    letter = _dead_letter(redis_client, "search_track", job.id, at=1)
    other = _dead_letter(redis_client, "poll_download", "another-job", at=2)

    # When the first is deleted by its id
    result = cli("dead-letters", "delete", letter)

    # Then it is gone, the other stays, and the job is still failed, the deletion in its history
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"deleted {letter} (search_track) from default",
        "1 message(s) deleted",
    ]
    assert [x["message_id"] for x in cli("dead-letters", "--json").json()] == [other]
    record = store.get(job.id)
    assert record.state is JobState.FAILED
    assert record.history[-1]["note"] == f"dead letter {letter} deleted"

    # When every dead letter is deleted, Then none is left
    assert cli("dead-letters", "delete", "--all", "--json").json() == {"deleted": [other]}
    assert cli("dead-letters", "--json").json() == []


def test_metrics_show_no_dead_letters_as_0_per_queue(redis_url: str) -> None:
    # Given no dead letter at all
    app = SoulspotJobs(load_settings(REDIS_URL=redis_url))
    try:
        # When the metrics are read
        metrics = generate_latest(registry_for(app)).decode()
    finally:
        app.close()

    # Then each queue of the jobs has a sample of 0, so an alert on the gauge has a value
    assert 'soulspot_dead_letters{queue="default"} 0.0' in metrics
    assert 'soulspot_dead_letters{queue="jobs.new"} 0.0' in metrics


def _dead_letter(client: redis.Redis, actor: str, job_id: str, *, at: int) -> str:
    """Put a message of ``actor`` for ``job_id`` in ``default``'s dead letters; its id."""
    message = dramatiq.Message(
        queue_name="default", actor_name=actor, args=(job_id,), kwargs={}, options={}
    )
    message = message.copy(options={"redis_message_id": f"r-{message.message_id}"})
    client.zadd(XQ, {f"r-{message.message_id}": at})
    client.hset(f"{XQ}.msgs", f"r-{message.message_id}", message.encode())
    return message.message_id
