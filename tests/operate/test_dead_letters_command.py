"""``dead-letters`` and ``dead-letters requeue ID|--all`` with a real Worker: messages that ran
out of retries or of deferral budget are listed with their reason, and requeued ones run."""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.deferral.dead_letters import DeadLetters
from tests.polling import wait_until

from .conftest import Cli

#: Seconds any wait for a message may take before the test fails.
DEADLINE = 20.0


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
    assert requeued == {"requeued": [overdue]}
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


def test_requeue_of_an_unknown_id_is_one_line_and_exit_1(cli: Cli) -> None:
    result = cli("dead-letters", "requeue", "no-such-message")
    assert result.exit_code == 1
    assert result.stderr == "error: no dead-lettered message 'no-such-message'\n"


def test_requeue_needs_an_id_or_all_but_not_both(cli: Cli) -> None:
    for args in (("dead-letters", "requeue"), ("dead-letters", "requeue", "x", "--all")):
        result = cli(*args)
        assert result.exit_code == 2
        assert result.stderr.startswith("error: dead-letters requeue needs a message id or --all")


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
