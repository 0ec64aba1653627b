"""The middleware's contract, in Dramatiq's own style: each case runs twice, on a broker with
Dramatiq's default middleware and on the same kind of broker with the project's stack
(:func:`~soulspot_jobs.middleware.middleware_stack`), and what a user of plain Dramatiq sees must
not change (attempts, dead letters, stored results, callbacks) -- except where the stack exists to
change it (a held message is deferred; a retry after a failure that left its breaker OPEN waits
for the breaker).

Every case runs on the StubBroker and on the RedisBroker, with a real ``Worker``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.results import ResultFailure, Results
from dramatiq.results.backends import RedisBackend as ResultsRedisBackend
from dramatiq.results.backends import StubBackend

from soulspot_jobs.circuit_breaker import (
    Breakers,
    CircuitState,
    MemoryBackend,
    RedisBackend,
)
from soulspot_jobs.deferral import (
    DeadLetterReasons,
    Deferrals,
    DeferredIndex,
    MemoryDeferredIndex,
    RedisDeferredIndex,
)
from soulspot_jobs.errors import ServiceUnavailableError, is_service_failure
from soulspot_jobs.keys import Keys
from soulspot_jobs.middleware import CircuitBreakerMiddleware, middleware_stack
from soulspot_jobs.settings import load_settings

QUEUE = "contract"
#: Milliseconds a worker waits on an empty queue before polling again.
WORKER_TIMEOUT = 50
#: Milliseconds of Dramatiq's retry backoff in these cases (kept small, the same for both runs).
BACKOFF = 100
#: Longest wait for a queue to drain, in milliseconds.
JOIN_TIMEOUT = 30_000


class Outage(ConnectionError):
    """A subclass of ConnectionError, as network libraries raise them."""


@dataclass
class Observed:
    """What a user of plain Dramatiq can see of one run."""

    attempts: list[float] = field(default_factory=list)
    dead_letters: int = 0
    result: str = ""
    callbacks: list[str] = field(default_factory=list)
    handled: list[str] = field(default_factory=list)
    deferred: dict[str, int] = field(default_factory=dict)

    def comparable(self) -> tuple[int, int, str, list[str], list[str]]:
        return (
            len(self.attempts),
            self.dead_letters,
            self.result,
            sorted(self.callbacks),
            self.handled,
        )


@dataclass
class Run:
    """One broker (plain or with the project's stack), its actors' observations and helpers."""

    broker: dramatiq.Broker
    results: Any
    seen: Observed
    #: The stack's breakers, deferred index and dead-letter reasons (``None``: plain Dramatiq).
    breakers: Breakers | None = None
    deferred: DeferredIndex | None = None
    reasons: DeadLetterReasons | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def actor(self, fn: Callable[..., Any] | None = None, *, service: str | None = None, **kw):
        """Declare an actor on this run's broker; ``service`` only with the project's stack."""
        options = {"queue_name": QUEUE, "store_results": True, **kw}
        if service is not None and self.breakers is not None:
            options["service"] = service

        def declare(fn: Callable[..., Any]) -> dramatiq.Actor:
            return dramatiq.actor(fn, broker=self.broker, actor_name=fn.__name__, **options)

        return declare(fn) if fn is not None else declare

    def attempt(self) -> None:
        with self.lock:
            self.seen.attempts.append(time.monotonic())

    def callback_actors(self) -> None:
        @self.actor(store_results=False)
        def on_failure(message_data: dict, exception_data: dict) -> None:
            with self.lock:
                self.seen.callbacks.append("on_failure")

        @self.actor(store_results=False)
        def on_retry_exhausted(message_data: dict, retry_info: dict) -> None:
            with self.lock:
                self.seen.callbacks.append("on_retry_exhausted")


@pytest.fixture(params=["stub", "redis"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@contextmanager
def started(kind: str, redis_url: str, with_stack: bool, **breaker: Any) -> Iterator[Run]:
    """A fresh broker of ``kind`` with Results (and the project's stack), and a Worker on it."""
    namespace = f"contract-{uuid.uuid4().hex[:8]}"
    keys = Keys(namespace)
    client = redis.Redis.from_url(redis_url)
    parts: dict[str, Any] = {}
    middleware = None
    if with_stack:
        settings = load_settings(
            REDIS_URL=redis_url,
            SOULSPOT_KEY_PREFIX=namespace,
            observability={"circuit_breaker": breaker},
        )
        on_redis = kind == "redis"
        backend: Any = (
            RedisBackend(client, prefix=keys.breakers, refresh_interval=0.05)
            if on_redis
            else MemoryBackend()
        )
        parts["breakers"] = Breakers(
            backend,
            config_for=settings.observability.circuit_breaker.config_for,
            is_failure=is_service_failure,
            owns_backend=True,
        )
        parts["deferred"] = RedisDeferredIndex(client, keys) if on_redis else MemoryDeferredIndex()
        parts["reasons"] = DeadLetterReasons(client if on_redis else None, keys)
        middleware = middleware_stack(
            parts["breakers"], Deferrals(parts["deferred"]), reasons=parts["reasons"]
        )
    if kind == "stub":
        broker: dramatiq.Broker = StubBroker(middleware, fail_fast_default=False)
        results: Any = StubBackend()
    else:
        broker = RedisBroker(url=redis_url, namespace=keys.dramatiq, middleware=middleware)
        results = ResultsRedisBackend(client=client, namespace=f"{namespace}-results")
    broker.add_middleware(Results(backend=results))
    run = Run(broker, results, Observed(), **parts)
    broker.declare_queue(QUEUE)
    worker = Worker(broker, worker_timeout=WORKER_TIMEOUT, worker_threads=2)
    worker.start()
    try:
        yield run
    finally:
        worker.stop()
        broker.close()
        if run.breakers is not None:
            run.breakers.close()
        if run.deferred is not None:
            run.deferred.close()
        client.close()


def finish(run: Run, message: dramatiq.Message) -> Observed:
    """Wait for the queue to drain; read the dead letters, the result and the index."""
    broker, seen = run.broker, run.seen
    if isinstance(broker, StubBroker):
        broker.join(QUEUE, timeout=JOIN_TIMEOUT)
        seen.dead_letters = len(broker.dead_letters)
    else:
        broker.join(QUEUE, timeout=JOIN_TIMEOUT)
        seen.dead_letters = broker.client.zcard(f"{broker.namespace}:{QUEUE}.XQ")
    try:
        value = message.get_result(backend=run.results, block=True, timeout=5_000)
        seen.result = f"value:{value!r}"
    except ResultFailure as failure:
        seen.result = f"failure:{failure.orig_exc_type}"
    if run.deferred is not None:
        seen.deferred = run.deferred.counts()
    return seen


def both(kind: str, redis_url: str, case: Callable[[Run], dramatiq.Message], **breaker: Any):
    """Run ``case`` on Dramatiq's default middleware, then on the project's stack; return both
    observations."""
    observed = []
    for with_stack in (False, True):
        with started(kind, redis_url, with_stack, **breaker) as run:
            run.callback_actors()
            observed.append(finish(run, case(run)))
    return observed


# -- 1. untagged actors are untouched ----------------------------------------------------------


@pytest.mark.parametrize("error", [ConnectionError, TimeoutError, Outage])
def test_an_untagged_actor_raising_a_network_error_is_failed_by_dramatiq_as_without_middleware(
    broker_kind: str, redis_url: str, error: type[Exception]
) -> None:
    # Given an untagged actor with max_retries=0 that raises a network error
    def case(run: Run) -> dramatiq.Message:
        @run.actor(max_retries=0, on_retry_exhausted="on_retry_exhausted")
        def fetch() -> None:
            run.attempt()
            raise error("connection refused")

        return fetch.send_with_options(on_failure="on_failure")

    # When it runs without and with the middleware
    plain, guarded = both(broker_kind, redis_url, case)

    # Then Dramatiq made one attempt, dead-lettered it, stored the failure and sent both
    # callbacks, the same both times, and nothing was deferred
    assert guarded.comparable() == plain.comparable()
    assert len(plain.attempts) == 1 and plain.dead_letters == 1
    assert plain.result == f"failure:{error.__name__}"
    assert set(plain.callbacks) == {"on_failure", "on_retry_exhausted"}
    assert guarded.deferred == {}


def test_an_untagged_actor_keeps_its_retries_and_backoff(
    broker_kind: str, redis_url: str
) -> None:
    # Given an untagged actor with 2 retries that always times out
    def case(run: Run) -> dramatiq.Message:
        @run.actor(max_retries=2, min_backoff=BACKOFF, max_backoff=BACKOFF)
        def fetch() -> None:
            run.attempt()
            raise TimeoutError("read timed out")

        return fetch.send()

    # When it runs without and with the middleware
    plain, guarded = both(broker_kind, redis_url, case)

    # Then both made 3 attempts and dead-lettered it
    assert guarded.comparable() == plain.comparable()
    assert len(guarded.attempts) == 3 and guarded.dead_letters == 1
    assert guarded.deferred == {}


def test_an_untagged_actor_whose_exception_is_in_throws_is_not_retried(
    broker_kind: str, redis_url: str
) -> None:
    # Given an untagged actor that declares ConnectionError as expected
    def case(run: Run) -> dramatiq.Message:
        @run.actor(max_retries=3, throws=(ConnectionError,))
        def fetch() -> None:
            run.attempt()
            raise Outage("peer went away")

        return fetch.send_with_options(on_failure="on_failure")

    # When it runs without and with the middleware
    plain, guarded = both(broker_kind, redis_url, case)

    # Then one attempt, aborted and dead-lettered, the same both times
    assert guarded.comparable() == plain.comparable()
    assert len(guarded.attempts) == 1 and guarded.dead_letters == 1


# -- 2. an actor called as a function is the function -------------------------------------------


@pytest.mark.parametrize("inner_tagged", [False, True])
@pytest.mark.parametrize("outer_tagged", [False, True])
def test_an_actor_called_as_a_function_raises_into_its_caller(
    broker_kind: str, redis_url: str, outer_tagged: bool, inner_tagged: bool
) -> None:
    # Given an actor whose function raises ConnectionError, called directly by another actor
    # that handles the error
    def case(run: Run) -> dramatiq.Message:
        @run.actor(service="slskd-api" if inner_tagged else None)
        def inner() -> None:
            raise ConnectionError("connection refused")

        @run.actor(service="spotify-api" if outer_tagged else None, max_retries=0)
        def outer() -> str:
            run.attempt()
            try:
                inner()
            except ConnectionError:
                with run.lock:
                    run.seen.handled.append("handled")
            return "done"

        return outer.send()

    # When the outer message runs without and with the middleware
    plain, guarded = both(broker_kind, redis_url, case)

    # Then the outer actor handled the error and succeeded, the same both times
    assert guarded.comparable() == plain.comparable()
    assert guarded.handled == ["handled"]
    assert guarded.result == "value:'done'"
    assert guarded.deferred == {}


# -- 3. a poison message on a healthy service is bounded by its retries -------------------------


def test_a_tagged_actor_failing_while_its_breaker_stays_closed_spends_its_retries(
    broker_kind: str, redis_url: str
) -> None:
    # Given a tagged actor whose own call always times out, on a breaker that stays CLOSED
    def case(run: Run) -> dramatiq.Message:
        @run.actor(
            service="slskd-api",
            max_retries=2,
            min_backoff=BACKOFF,
            max_backoff=BACKOFF,
            on_retry_exhausted="on_retry_exhausted",
        )
        def search() -> None:
            run.attempt()
            raise ServiceUnavailableError("slskd-api", "GET /api/v0/searches timed out")

        return search.send_with_options(on_failure="on_failure")

    # When it runs without and with the middleware
    plain, guarded = both(broker_kind, redis_url, case, failure_threshold=100)

    # Then it made exactly max_retries + 1 attempts, was dead-lettered, stored its failure and
    # sent both callbacks, like plain Dramatiq; and nothing was deferred
    assert guarded.comparable() == plain.comparable()
    assert len(guarded.attempts) == 3 and guarded.dead_letters == 1
    assert guarded.result == "failure:ServiceUnavailableError"
    assert set(guarded.callbacks) == {"on_failure", "on_retry_exhausted"}
    assert guarded.deferred == {}
    # And the retries backed off no faster than Dramatiq's own (backoff/2 plus jitter)
    gaps = [b - a for a, b in zip(guarded.attempts, guarded.attempts[1:], strict=False)]
    assert all(gap >= BACKOFF / 2000 for gap in gaps)


def test_a_tagged_actor_respects_throws_and_retry_when(broker_kind: str, redis_url: str) -> None:
    # Given a tagged actor whose retry_when allows a single retry
    def case(run: Run) -> dramatiq.Message:
        @run.actor(
            service="slskd-api",
            retry_when=lambda retries, exc: retries < 1,
            min_backoff=BACKOFF,
            max_backoff=BACKOFF,
        )
        def search() -> None:
            run.attempt()
            raise TimeoutError("read timed out")

        return search.send()

    # When it runs without and with the middleware
    plain, guarded = both(broker_kind, redis_url, case, failure_threshold=100)

    # Then retry_when decided: two attempts, the same both times
    assert guarded.comparable() == plain.comparable()
    assert len(guarded.attempts) == 2 and guarded.dead_letters == 1


def test_a_retry_after_a_failure_that_opened_the_breaker_waits_out_its_timeout(
    broker_kind: str, redis_url: str
) -> None:
    # Given a tagged actor with one retry that fails once, on a breaker that opens at the first
    # failure for 0.3 s, and a retry backoff far shorter than that
    with started(broker_kind, redis_url, True, failure_threshold=1, timeout=0.3) as run:

        @run.actor(service="slskd-api", max_retries=1, min_backoff=10, max_backoff=10)
        def search() -> str:
            run.attempt()
            if len(run.seen.attempts) == 1:
                raise ServiceUnavailableError("slskd-api", "connection refused")
            return "found"

        message = search.send()
        seen = finish(run, message)
        breaker = run.breakers["slskd-api"]

        # Then the failure opened the breaker and spent the retry (the message ran), and the
        # retry came only after the breaker's timeout, not after the 10 ms backoff
        assert len(seen.attempts) == 2
        assert seen.dead_letters == 0
        assert seen.result == "value:'found'"
        assert seen.attempts[1] - seen.attempts[0] >= 0.3
        assert breaker.stats.total_failures == 1
        assert breaker.state is CircuitState.CLOSED or breaker.stats.total_successes >= 1


@pytest.mark.parametrize("max_retries", [0, 3])
def test_a_poison_message_alone_on_its_service_is_attempted_at_most_max_retries_plus_one(
    broker_kind: str, redis_url: str, max_retries: int
) -> None:
    # Given a tagged actor that always fails, alone on a breaker that opens at its first failure
    # and lets one trial through 50 ms later: every HALF_OPEN trial is this message again
    def case(run: Run) -> dramatiq.Message:
        @run.actor(
            service="slskd-api",
            max_retries=max_retries,
            min_backoff=BACKOFF,
            max_backoff=BACKOFF,
            on_retry_exhausted="on_retry_exhausted",
        )
        def search() -> None:
            run.attempt()
            raise ServiceUnavailableError("slskd-api", "500 Internal Server Error")

        return search.send_with_options(on_failure="on_failure")

    # When it runs on Dramatiq's default middleware and on the project's stack
    plain, guarded = both(broker_kind, redis_url, case, failure_threshold=1, timeout=0.05)

    # Then each trial that failed was one of its own attempts: max_retries + 1 in all, then it
    # was dead-lettered with its failure stored and both callbacks sent, as on plain Dramatiq
    assert len(guarded.attempts) == max_retries + 1
    assert guarded.comparable() == plain.comparable()
    assert guarded.result == "failure:ServiceUnavailableError"
    assert guarded.deferred == {}


def test_an_actor_given_wrong_arguments_is_dead_lettered_at_once(
    broker_kind: str, redis_url: str
) -> None:
    # Given a tagged actor with 3 retries and a message with the wrong number of arguments
    with started(broker_kind, redis_url, True) as run:

        @run.actor(service="slskd-api", max_retries=3)
        def search(job_id: str) -> None:
            run.attempt()

        message = search.send("job-1", "surplus")
        seen = finish(run, message)

        # Then it never ran and went to the dead-letter queue once, with the reason
        assert seen.attempts == []
        assert seen.dead_letters == 1
        assert "wrong arguments" in run.reasons.get(message.message_id)


def test_wrong_arguments_of_a_call_inside_the_actor_are_its_own_failure_as_on_dramatiq(
    broker_kind: str, redis_url: str
) -> None:
    # Given a tagged actor with 1 retry whose body calls its own function with wrong arguments
    def case(run: Run) -> dramatiq.Message:
        @run.actor(service="slskd-api", max_retries=1, min_backoff=BACKOFF, max_backoff=BACKOFF)
        def search(job_id: str) -> None:
            run.attempt()
            search.fn(job_id, "surplus")

        return search.send("job-1")

    # When it runs without and with the middleware
    plain, guarded = both(broker_kind, redis_url, case)

    # Then the TypeError is the message's own failure: it ran twice (one retry) and failed with
    # TypeError, as on plain Dramatiq, and its dead letter is not called malformed
    assert guarded.comparable() == plain.comparable()
    assert len(guarded.attempts) == 2 and guarded.dead_letters == 1
    assert guarded.result == "failure:TypeError"


def test_closing_the_broker_stops_the_middlewares_background_threads(redis_url: str) -> None:
    # Given a middleware that built its own Redis backend and a worker that used it
    settings = load_settings(REDIS_URL=redis_url)
    broker = RedisBroker(url=redis_url, namespace=f"contract-{uuid.uuid4().hex[:8]}")
    middleware = CircuitBreakerMiddleware(settings=settings)
    broker.add_middleware(middleware)
    ran = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api")
    def search() -> None:
        ran.set()

    before = {t.ident for t in threading.enumerate()}
    worker = Worker(broker, worker_timeout=WORKER_TIMEOUT, worker_threads=1)
    worker.start()
    search.send()
    assert ran.wait(10)
    started_here = [t for t in threading.enumerate() if t.ident not in before]
    assert any(t.name == "soulspot-breaker-view" for t in started_here)

    # When the worker stops
    worker.stop()

    # Then no thread the middleware started is left running
    left = [t.name for t in started_here if t.is_alive() and t.name.startswith("soulspot")]
    assert left == []
    broker.close()
