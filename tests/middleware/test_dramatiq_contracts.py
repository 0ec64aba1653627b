"""Dramatiq's own contracts hold for deferred messages, in Dramatiq's style, with a real Worker.

Each case runs on the StubBroker with :func:`~soulspot_jobs.middleware.middleware_stack` and on
``build_broker``'s RedisBroker: Callbacks fire once per outcome and never for a deferral, nothing
is logged at CRITICAL, Results, Pipelines, group completion callbacks, AgeLimit, TimeLimit and
dramatiq-abort behave as they do for any message; and ``build_broker``'s broker runs messages
whatever encoder Dramatiq is given, dead-lettering what it cannot decode.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.encoder import Encoder, JSONEncoder, PickleEncoder
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits.backends import StubBackend as StubRateLimits
from dramatiq.results import Results
from dramatiq.results.backends import StubBackend as StubResults
from dramatiq_abort import Abortable, abort
from dramatiq_abort.backends import StubBackend as StubAborts

from soulspot_jobs.broker import build_broker
from soulspot_jobs.circuit_breaker import Breakers, CircuitBreaker, MemoryBackend
from soulspot_jobs.deferral import (
    DEFERRALS,
    DEFERRED_BY,
    FIRST_DEFERRED_AT,
    DeadLetterReasons,
    Deferrals,
    MemoryDeferredIndex,
)
from soulspot_jobs.deferral.dead_letters import DeadLetters
from soulspot_jobs.errors import RetryLater, ServiceUnavailableError, is_service_failure
from soulspot_jobs.middleware import DeferringRetries, middleware_stack
from soulspot_jobs.settings import load_settings
from tests.polling import wait_until

QUEUE = "contracts"
#: Seconds a breaker stays OPEN in these cases (short: the Redis delay queue adds ~2 s).
OPEN_FOR = 0.3
#: Seconds any one wait may take.
DEADLINE = 20.0
#: Breaker settings of every case: open at the first failure, a short timeout, one success.
BREAKER = {"failure_threshold": 1, "timeout": OPEN_FOR, "success_threshold": 1}


class CriticalRecords(logging.Handler):
    """Every CRITICAL record a stdlib logger emits during a case from a thread the case started
    (Dramatiq's middleware errors and consumer crashes are logged at CRITICAL; threads another
    test left behind are not this case's)."""

    def __init__(self) -> None:
        super().__init__(level=logging.CRITICAL)
        self.records: list[logging.LogRecord] = []
        self._earlier = {thread.ident for thread in threading.enumerate()}

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread not in self._earlier:
            self.records.append(record)


@dataclass
class Stack:
    """A broker with the project's stack, the parts it shares, and a worker on it."""

    broker: Any
    breakers: Breakers
    reasons: DeadLetterReasons
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    worker: Worker | None = None

    def breaker(self, service: str = "slskd-api") -> CircuitBreaker:
        return self.breakers[service]

    def note(self, what: str) -> None:
        with self.lock:
            self.calls.append(what)

    def seen(self, what: str) -> int:
        with self.lock:
            return self.calls.count(what)

    def start(self) -> None:
        self.worker = Worker(self.broker, worker_timeout=50, worker_threads=2)
        self.worker.start()

    def join(self) -> None:
        """Wait until the queue, its delay queue and the worker's threads are idle."""
        if isinstance(self.broker, StubBroker):
            self.broker.join(QUEUE, timeout=int(DEADLINE * 1000), fail_fast=False)
        else:
            self.broker.join(QUEUE, timeout=int(DEADLINE * 1000))
        assert self.worker is not None
        self.worker.join()

    def callback_actors(self) -> None:
        """``on_success`` and ``on_failure`` actors that note each call."""

        @dramatiq.actor(broker=self.broker, queue_name=QUEUE)
        def on_success(message_data: dict, result: Any) -> None:
            self.note("on_success")

        @dramatiq.actor(broker=self.broker, queue_name=QUEUE)
        def on_failure(message_data: dict, exception_data: dict) -> None:
            self.note("on_failure")


def _stub_stack() -> Stack:
    settings = load_settings(observability={"circuit_breaker": BREAKER})
    breakers = Breakers(
        MemoryBackend(),
        config_for=settings.observability.circuit_breaker.config_for,
        is_failure=is_service_failure,
    )
    reasons = DeadLetterReasons()
    deferrals = Deferrals(MemoryDeferredIndex(), jitter_ratio=0.0)
    broker = StubBroker(
        middleware_stack(breakers, deferrals, reasons=reasons), fail_fast_default=False
    )
    return Stack(broker, breakers, reasons)


def _redis_stack(redis_url: str) -> Stack:
    settings = load_settings(
        REDIS_URL=redis_url,
        SOULSPOT_KEY_PREFIX=f"contracts-{uuid.uuid4().hex[:8]}",
        observability={"circuit_breaker": BREAKER},
    )
    broker = build_broker(settings, jitter_ratio=0.0)
    return Stack(broker, broker.breakers, broker.dead_letter_reasons)


@pytest.fixture(params=["stub", "redis"])
def stack(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Stack]:
    built = _stub_stack() if request.param == "stub" else _redis_stack(redis_url)
    built.broker.declare_queue(QUEUE)
    critical = CriticalRecords()
    logging.getLogger().addHandler(critical)
    try:
        yield built
        assert [r.getMessage() for r in critical.records] == []
    finally:
        logging.getLogger().removeHandler(critical)
        if built.worker is not None:
            built.worker.stop()
        built.broker.close()
        built.breakers.backend.close()


def until(condition: Any, what: str) -> None:
    wait_until(condition, what, timeout=DEADLINE)


# -- Callbacks ----------------------------------------------------------------------------------


def test_a_message_deferred_before_it_ran_fires_on_success_once_and_on_failure_never(
    stack: Stack,
) -> None:
    # Given a tagged actor with both callbacks, and its breaker OPEN
    stack.callback_actors()

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE, service="slskd-api")
    def fetch() -> str:
        stack.note("ran")
        return "found"

    stack.breaker().force_open_sync(OPEN_FOR)

    # When a message is deferred, then runs once the breaker admits it
    fetch.send_with_options(on_success="on_success", on_failure="on_failure")
    stack.start()
    until(lambda: stack.seen("on_success") == 1, "on_success")
    stack.join()

    # Then it ran once, on_success fired once and on_failure never (nothing CRITICAL: fixture)
    assert (stack.seen("ran"), stack.seen("on_success"), stack.seen("on_failure")) == (1, 1, 0)


def test_a_message_whose_failure_opened_its_breaker_fires_each_callback_once(
    stack: Stack,
) -> None:
    # Given a tagged actor that fails once with an outage, then succeeds
    stack.callback_actors()

    @dramatiq.actor(
        broker=stack.broker, queue_name=QUEUE, service="slskd-api", max_retries=3, min_backoff=10
    )
    def fetch() -> str:
        stack.note("ran")
        if stack.seen("ran") == 1:
            raise ServiceUnavailableError("slskd-api", "connection refused")
        return "found"

    # When its failure opens the breaker, and its retry waits the breaker out and succeeds
    fetch.send_with_options(on_success="on_success", on_failure="on_failure")
    stack.start()
    until(lambda: stack.seen("on_success") == 1, "on_success")
    stack.join()

    # Then on_failure fired once for the failed attempt and on_success once for the success
    assert (stack.seen("ran"), stack.seen("on_failure"), stack.seen("on_success")) == (2, 1, 1)


def test_a_message_held_back_by_retry_later_fires_on_success_once_and_on_failure_never(
    stack: Stack,
) -> None:
    # Given a tagged actor that holds itself back once (a busy rate limit), then succeeds
    stack.callback_actors()

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE, service="musicbrainz-api")
    def enrich() -> str:
        stack.note("ran")
        if stack.seen("ran") == 1:
            raise RetryLater("musicbrainz-api", OPEN_FOR, "rate limit busy")
        return "found"

    # When it runs, is deferred, and runs again
    enrich.send_with_options(on_success="on_success", on_failure="on_failure")
    stack.start()
    until(lambda: stack.seen("on_success") == 1, "on_success")
    stack.join()

    # Then the deferral fired nothing: on_success once, on_failure never
    assert (stack.seen("ran"), stack.seen("on_success"), stack.seen("on_failure")) == (2, 1, 0)


def test_a_message_dead_lettered_past_its_deferral_budget_fires_on_failure_once(
    stack: Stack,
) -> None:
    # Given a tagged actor whose message has been deferred for two minutes, a minute past its
    # budget, and its breaker OPEN
    stack.callback_actors()

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE, service="slskd-api", max_deferral=60_000)
    def fetch() -> None:
        stack.note("ran")

    stack.breaker().force_open_sync(60.0)
    long_ago = int((time.time() - 120) * 1000)
    message = fetch.send_with_options(
        on_success="on_success",
        on_failure="on_failure",
        **{FIRST_DEFERRED_AT: long_ago, DEFERRALS: 4, DEFERRED_BY: "slskd-api"},
    )

    # When a worker meets it, refused once more
    stack.start()
    until(lambda: stack.seen("on_failure") == 1, "on_failure")
    stack.join()

    # Then it never ran, was dead-lettered with the reason, and on_failure fired once
    assert (stack.seen("ran"), stack.seen("on_success"), stack.seen("on_failure")) == (0, 0, 1)
    assert "past the budget" in stack.reasons.get(message.message_id)


# -- Results, Pipelines, groups -----------------------------------------------------------------


def test_a_caller_blocked_on_a_deferred_messages_result_gets_the_value_it_computed_later(
    stack: Stack,
) -> None:
    # Given Results, a tagged actor that stores its result, and its breaker OPEN
    results = StubResults()
    stack.broker.add_middleware(Results(backend=results))

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE, service="slskd-api", store_results=True)
    def lookup(n: int) -> int:
        return n * 2

    stack.breaker().force_open_sync(OPEN_FOR)

    # When a caller blocks on the result of a message that is deferred first
    message = lookup.send(21)
    stack.start()
    value = message.get_result(backend=results, block=True, timeout=int(DEADLINE * 1000))

    # Then it gets the value computed after the deferral, not a None stored for the deferral
    assert value == 42
    stack.join()


def test_a_pipeline_through_a_deferred_message_passes_its_result_on_once(stack: Stack) -> None:
    # Given a pipeline whose first step is a tagged actor, and its breaker OPEN
    received: list[int] = []

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE, service="slskd-api")
    def search(n: int) -> int:
        return n + 1

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE)
    def collect(value: int) -> None:
        with stack.lock:
            received.append(value)

    stack.breaker().force_open_sync(OPEN_FOR)

    # When the pipeline runs
    dramatiq.pipeline([search.message(1), collect.message()], broker=stack.broker).run()
    stack.start()
    until(lambda: received, "the pipeline's last step")
    stack.join()

    # Then the next step got the deferred step's result, once
    assert received == [2]


def test_a_groups_completion_callback_fires_once_after_its_deferred_member_ran(
    stack: Stack,
) -> None:
    # Given group callbacks, a group of three tagged messages and their breaker OPEN
    stack.broker.add_middleware(GroupCallbacks(StubRateLimits()))

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE, service="slskd-api")
    def download(n: int) -> None:
        stack.note("ran")

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE)
    def all_done() -> None:
        stack.note("completed")

    stack.breaker().force_open_sync(OPEN_FOR)

    # When the group's members are deferred, then run
    members = dramatiq.group([download.message(n) for n in range(3)], broker=stack.broker)
    members.add_completion_callback(all_done.message())
    members.run()
    stack.start()
    until(lambda: stack.seen("completed") == 1, "the completion callback")
    stack.join()

    # Then the callback fired once, after all three ran
    assert (stack.seen("ran"), stack.seen("completed")) == (3, 1)


# -- AgeLimit, TimeLimit, dramatiq-abort --------------------------------------------------------


def test_a_deferred_message_that_outlives_its_max_age_is_dead_lettered_without_running(
    stack: Stack,
) -> None:
    # Given a tagged actor whose messages live 200 ms, and its breaker OPEN for longer
    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE, service="slskd-api", max_age=200)
    def fetch() -> None:
        stack.note("ran")

    stack.breaker().force_open_sync(OPEN_FOR)

    # When it is deferred and comes back too old (AgeLimit counts from its first enqueue)
    message = fetch.send()
    stack.start()
    stack.join()

    # Then AgeLimit dead-lettered it and it never ran
    assert stack.seen("ran") == 0
    assert message.message_id in _dead_letter_ids(stack)


def test_a_deferred_message_gets_its_whole_time_limit_when_it_runs(stack: Stack) -> None:
    # Given a tagged actor that takes 100 ms under a 400 ms time limit, and its breaker OPEN for
    # longer than the limit
    @dramatiq.actor(
        broker=stack.broker, queue_name=QUEUE, service="slskd-api", time_limit=400, max_retries=0
    )
    def slow() -> None:
        time.sleep(0.1)
        stack.note("finished")

    stack.broker.emit_after("process_boot")  # starts TimeLimit's watchdog, as the CLI does
    stack.breaker().force_open_sync(0.5)

    # When it is deferred, then runs
    slow.send()
    stack.start()
    until(lambda: stack.seen("finished") == 1, "the deferred message to finish")
    stack.join()

    # Then its time limit counted from when it ran, not from its first delivery
    assert _dead_letter_ids(stack) == []


def test_a_deferred_message_cancelled_with_dramatiq_abort_never_runs(stack: Stack) -> None:
    # Given dramatiq-abort, a tagged abortable actor, and its breaker OPEN
    abortable = Abortable(backend=StubAborts())
    stack.broker.add_middleware(abortable)

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE, service="slskd-api")
    def fetch() -> None:
        stack.note("ran")

    stack.breaker().force_open_sync(OPEN_FOR)
    message = fetch.send()
    stack.start()
    until(lambda: _deferred_count(stack) == 1, "the deferral")

    # When it is cancelled while deferred
    abort(message.message_id, middleware=abortable)
    stack.join()

    # Then its deferred copy was skipped: it never ran, and is no longer listed as deferred
    assert stack.seen("ran") == 0
    assert _deferred_count(stack) == 0


# -- Retries: a poison message, an outage ----------------------------------------------------------


@pytest.mark.parametrize("max_retries", [0, 3])
def test_a_poison_message_alone_on_its_service_is_attempted_at_most_max_retries_plus_one(
    stack: Stack, max_retries: int
) -> None:
    # Given a tagged actor that always fails its service, alone on a breaker that opens at its
    # first failure and admits a trial 0.3 s later: every HALF_OPEN trial is this message again
    stack.callback_actors()

    @dramatiq.actor(
        broker=stack.broker,
        queue_name=QUEUE,
        service="slskd-api",
        max_retries=max_retries,
        min_backoff=10,
        max_backoff=10,
    )
    def search() -> None:
        stack.note("ran")
        raise ServiceUnavailableError("slskd-api", "500 Internal Server Error")

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE)
    def on_retry_exhausted(message_data: dict, retry_info: dict) -> None:
        stack.note("exhausted")

    # When a worker runs it until its retries run out (or it runs once too often)
    message = search.send_with_options(
        on_failure="on_failure", on_retry_exhausted="on_retry_exhausted"
    )
    stack.start()
    until(
        lambda: (
            stack.seen("exhausted") == 1
            or stack.seen("ran") > max_retries + 1
            or _dead_letter_ids(stack)
        ),
        "its retries to run out",
    )
    assert stack.seen("ran") <= max_retries + 1, f"{stack.seen('ran')} attempts"
    stack.join()

    # Then each failed trial was one of its own attempts: max_retries + 1 in all, each with its
    # on_failure; its retries ran out once, it was dead-lettered once and nothing stays deferred
    attempts = max_retries + 1
    assert (stack.seen("ran"), stack.seen("on_failure")) == (attempts, attempts)
    assert (stack.seen("exhausted"), stack.seen("on_success")) == (1, 0)
    assert _dead_letter_ids(stack) == [message.message_id]
    assert _deferred_count(stack) == 0


@pytest.mark.parametrize("max_retries", [0, 3])
def test_a_message_refused_by_its_open_breaker_spends_no_retry_before_it_runs(
    stack: Stack, max_retries: int
) -> None:
    # Given a tagged actor whose job always fails on its own (no fault of its service, so its
    # breaker never counts it), and its breaker OPEN: an outage
    stack.callback_actors()

    @dramatiq.actor(
        broker=stack.broker,
        queue_name=QUEUE,
        service="slskd-api",
        max_retries=max_retries,
        min_backoff=10,
        max_backoff=10,
    )
    def tag() -> None:
        stack.note("ran")
        raise ValueError("no such tag")

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE)
    def on_retry_exhausted(message_data: dict, retry_info: dict) -> None:
        stack.note("exhausted")

    stack.breaker().force_open_sync(OPEN_FOR)

    # When it is refused and deferred before it ran, then runs until its retries run out
    message = tag.send_with_options(
        on_failure="on_failure", on_retry_exhausted="on_retry_exhausted"
    )
    stack.start()
    until(lambda: stack.seen("exhausted") == 1 or _dead_letter_ids(stack), "its retries to run out")
    stack.join()

    # Then the refusal spent none of its retries: it ran max_retries + 1 times (with
    # max_retries=0, once), each failure fired on_failure and its retries ran out once
    attempts = max_retries + 1
    assert (stack.seen("ran"), stack.seen("on_failure")) == (attempts, attempts)
    assert (stack.seen("exhausted"), stack.seen("on_success")) == (1, 0)
    # And the dead letter is that message, deferred at least once before it ran
    [letter] = _dead_lettered(stack)
    assert letter.message_id == message.message_id
    assert letter.options.get(DEFERRALS, 0) >= 1
    assert _deferred_count(stack) == 0


# -- encoders (build_broker's Redis broker) ------------------------------------------------------


class ReversedJSON(Encoder):
    """A custom encoder: JSON written backwards (no JSON reader can parse it)."""

    def encode(self, data: dict) -> bytes:
        return json.dumps(data, separators=(",", ":")).encode()[::-1]

    def decode(self, data: bytes) -> dict:
        return json.loads(data[::-1])


@pytest.fixture(params=[JSONEncoder, PickleEncoder, ReversedJSON], ids=lambda c: c.__name__)
def encoder(request: pytest.FixtureRequest) -> Iterator[Encoder]:
    """Dramatiq's global encoder for one test, put back afterwards."""
    chosen = request.param()
    dramatiq.set_encoder(chosen)
    try:
        yield chosen
    finally:
        dramatiq.set_encoder(JSONEncoder())


@pytest.fixture
def redis_stack(redis_url: str) -> Iterator[Stack]:
    built = _redis_stack(redis_url)
    built.broker.declare_queue(QUEUE)
    yield built
    if built.worker is not None:
        built.worker.stop()
    built.broker.close()


def test_deferred_and_retried_messages_run_on_any_encoder(
    encoder: Encoder, redis_stack: Stack
) -> None:
    # Given build_broker's broker on this encoder, a breaker OPEN, a deferred message and one
    # that fails once
    stack = redis_stack

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE, service="slskd-api")
    def deferred() -> None:
        stack.note("deferred ran")

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE, max_retries=1, min_backoff=10)
    def flaky() -> None:
        stack.note("flaky ran")
        if stack.seen("flaky ran") == 1:
            raise KeyError("once")

    stack.breaker().force_open_sync(OPEN_FOR)

    # When a worker runs them
    deferred.send()
    flaky.send()
    stack.start()
    until(lambda: stack.seen("deferred ran") and stack.seen("flaky ran") == 2, "both to run")
    stack.join()

    # Then each ran as it would on JSON, and nothing was dead-lettered or left deferred
    assert (stack.seen("deferred ran"), stack.seen("flaky ran")) == (1, 2)
    assert _dead_letter_ids(stack) == []
    assert stack.broker.deferred.counts() == {}


def test_a_payload_the_encoder_cannot_decode_is_dead_lettered_and_the_consumer_goes_on(
    encoder: Encoder, redis_stack: Stack
) -> None:
    # Given an undecodable payload queued before a good message
    stack = redis_stack
    records = CriticalRecords()
    records.setLevel(logging.INFO)
    logging.getLogger("dramatiq").addHandler(records)

    @dramatiq.actor(broker=stack.broker, queue_name=QUEUE)
    def good() -> None:
        stack.note("good ran")

    stack.broker.do_enqueue(QUEUE, "not-a-message", b"\x00 not any encoding \xff")
    good.send()

    # When a worker consumes the queue
    try:
        stack.start()
        until(lambda: stack.seen("good ran"), "the good message")
        stack.join()
    finally:
        logging.getLogger("dramatiq").removeHandler(records)

    # Then the payload is among the dead letters with why it cannot be read, the good message
    # ran, and the consumer never crashed or restarted
    [letter] = DeadLetters(stack.broker).list()
    assert letter.redis_message_id == "not-a-message"
    assert letter.reason.startswith("undecodable")
    messages = [r.getMessage() for r in records.records]
    assert not [m for m in messages if "Restarting consumer" in m or "unexpected error" in m]
    assert [r for r in records.records if r.levelno >= logging.CRITICAL] == []


def test_fetched_raw_payloads_stay_in_the_ack_set_as_on_dramatiqs_own_broker(
    redis_stack: Stack,
) -> None:
    """Dramatiq's own ``test_redis_unacked_messages_can_be_requeued``, on build_broker's broker:
    raw bytes (no encoder's output) fetched by hand stay in this broker's ack set."""
    # Given two raw payloads on a queue
    broker = redis_stack.broker
    broker.declare_queue("raw")
    ids = ["raw-1", "raw-2"]
    for redis_id in ids:
        broker.do_enqueue("raw", redis_id, b"message-data")

    # When they are fetched one by one
    fetched = [broker.do_fetch("raw", 1), broker.do_fetch("raw", 1)]

    # Then both came back as they are, and both are in the ack set
    assert fetched == [[b"message-data"], [b"message-data"]]
    members = broker.client.smembers(broker.ack_set_key("raw"))
    assert sorted(m.decode() for m in members) == ids


# -- helpers -------------------------------------------------------------------------------------


def _dead_letter_ids(stack: Stack) -> list[str]:
    if isinstance(stack.broker, StubBroker):
        return [m.message_id for m in stack.broker.dead_letters]
    return [letter.message_id for letter in DeadLetters(stack.broker).list()]


def _dead_lettered(stack: Stack) -> list[Any]:
    """The dead-lettered messages (those whose payload can be read, on Redis)."""
    if isinstance(stack.broker, StubBroker):
        return list(stack.broker.dead_letters)
    letters = DeadLetters(stack.broker).list()
    return [letter.message for letter in letters if letter.message is not None]


def _deferred_count(stack: Stack) -> int:
    (retries,) = [m for m in stack.broker.middleware if isinstance(m, DeferringRetries)]
    return sum(retries.deferrals.index.counts().values())
