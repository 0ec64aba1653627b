"""``DeadLetters`` on Dramatiq's Redis broker: delete one or all (with the recorded reasons),
and ``requeue_all`` leaves malformed ones where they are."""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from soulspot_jobs.deferral.dead_letters import (
    DeadLetter,
    DeadLetterNotFound,
    DeadLetters,
    RequeueAll,
)
from soulspot_jobs.deferral.reasons import DeadLetterReasons

from .conftest import KEYS

NAMESPACE = KEYS.dramatiq
XQ = f"{NAMESPACE}:default.XQ"


@pytest.fixture
def broker(redis_url: str) -> Iterator[RedisBroker]:
    """A Redis broker (no worker) with one actor, ``work``, on ``default``."""
    built = RedisBroker(url=redis_url, namespace=NAMESPACE)

    @dramatiq.actor(broker=built)
    def work(n: int) -> None: ...

    yield built
    built.close()


def _dead_letter(client: redis.Redis, message: dramatiq.Message | bytes, at: int = 1) -> str:
    """Put ``message`` (or a raw payload) in ``default``'s dead letters; its Redis id."""
    if isinstance(message, bytes):
        redis_id, raw = f"raw-{at}", message
    else:
        redis_id = f"redis-{message.message_id}"
        message = message.copy(options={"redis_message_id": redis_id})
        raw = message.encode()
    client.zadd(XQ, {redis_id: at})
    client.hset(f"{XQ}.msgs", redis_id, raw)
    return redis_id


def _letters(broker: RedisBroker, reasons: DeadLetterReasons, **hooks) -> DeadLetters:
    return DeadLetters(broker, reasons=reasons, **hooks)


def test_delete_removes_the_message_and_its_recorded_reason(
    broker: RedisBroker, redis_client: redis.Redis
) -> None:
    # Given two dead letters, one with a reason the project's Retries recorded
    reasons = DeadLetterReasons(redis_client, KEYS)
    gone = dramatiq.Message(
        queue_name="default", actor_name="work", args=(1,), kwargs={}, options={}
    )
    kept = dramatiq.Message(
        queue_name="default", actor_name="work", args=(2,), kwargs={}, options={}
    )
    _dead_letter(redis_client, gone, at=1)
    _dead_letter(redis_client, kept, at=2)
    reasons.record(gone.message_id, "deferred 3 times, past the budget")
    deleted: list[DeadLetter] = []
    letters = _letters(broker, reasons, on_delete=deleted.append)

    # When one is deleted by its id
    letter = letters.delete(gone.message_id)

    # Then it is gone with its reason, the other one stays, and the hook saw it
    assert letter.message_id == gone.message_id
    assert letter.reason == "deferred 3 times, past the budget"
    assert [x.message_id for x in letters.list()] == [kept.message_id]
    assert reasons.get(gone.message_id) is None
    assert redis_client.hlen(f"{XQ}.msgs") == 1
    assert deleted == [letter]

    # And deleting it again says there is no such dead letter
    with pytest.raises(DeadLetterNotFound, match="no dead-lettered message"):
        letters.delete(gone.message_id)


def test_delete_all_deletes_even_an_undecodable_payload(
    broker: RedisBroker, redis_client: redis.Redis
) -> None:
    # Given a dead letter and a payload no encoder can read
    message = dramatiq.Message(
        queue_name="default", actor_name="work", args=(1,), kwargs={}, options={}
    )
    _dead_letter(redis_client, message, at=1)
    _dead_letter(redis_client, b"\x00not json", at=2)
    letters = _letters(broker, DeadLetterReasons(redis_client, KEYS))

    # When every dead letter is deleted
    deleted = letters.delete_all()

    # Then both are gone, the undecodable one included
    assert [letter.actor for letter in deleted] == ["work", "?"]
    assert letters.list() == []
    assert redis_client.exists(XQ, f"{XQ}.msgs") == 0


def test_requeue_all_leaves_malformed_dead_letters_and_says_which(
    broker: RedisBroker, redis_client: redis.Redis
) -> None:
    # Given a good dead letter, one dead-lettered as malformed, and an undecodable payload
    reasons = DeadLetterReasons(redis_client, KEYS)
    good, bad = (
        dramatiq.Message(queue_name="default", actor_name="work", args=(n,), kwargs={}, options={})
        for n in (1, 2)
    )
    _dead_letter(redis_client, good, at=1)
    _dead_letter(redis_client, bad, at=2)
    _dead_letter(redis_client, b"\x00not json", at=3)
    reasons.record(bad.message_id, "malformed: no job record 'x'")
    letters = _letters(broker, reasons)

    # When every dead letter is requeued
    outcome = letters.requeue_all()

    # Then the good one is back on its queue; the two malformed ones stay, with why
    assert isinstance(outcome, RequeueAll)
    assert [letter.message_id for letter in outcome.requeued] == [good.message_id]
    [named, undecodable] = outcome.skipped
    assert named.why_malformed == "no job record 'x'"
    assert undecodable.why_malformed.startswith("undecodable: ")
    assert all(letter.malformed for letter in outcome.skipped)
    assert not outcome.requeued[0].malformed
    assert {letter.message_id for letter in letters.list()} == {
        bad.message_id,
        outcome.skipped[1].message_id,
    }
    assert redis_client.llen(f"{NAMESPACE}:default") == 1
