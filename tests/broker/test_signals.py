"""``HandledSignals``: the project's brokers call each middleware hook Dramatiq would call, in
Dramatiq's order and with its error handling, and skip only the base class's no-ops."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, SkipMessage

from soulspot_jobs.broker import build_broker
from soulspot_jobs.settings import load_settings


class Journal:
    """The hooks the recording middleware saw, in order, across threads."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self._lock = threading.Lock()

    def add(self, entry: str) -> None:
        with self._lock:
            self.entries.append(entry)


class Everything(Middleware):
    """Handles both hooks of processing and of acknowledging a message."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def before_process_message(self, broker: Any, message: Any) -> None:
        self.journal.add("everything.before_process_message")

    def after_process_message(self, broker: Any, message: Any, **outcome: Any) -> None:
        self.journal.add("everything.after_process_message")

    def before_ack(self, broker: Any, message: Any) -> None:
        self.journal.add("everything.before_ack")

    def after_ack(self, broker: Any, message: Any) -> None:
        self.journal.add("everything.after_ack")


class AckOnly(Middleware):
    """Handles one hook only."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def after_ack(self, broker: Any, message: Any) -> None:
        self.journal.add("ack_only.after_ack")


def _instance_hooked(journal: Journal) -> Middleware:
    """A plain Middleware whose hook is set on the instance, not its class."""
    middleware = Middleware()

    def after_process_message(broker: Any, message: Any, **outcome: Any) -> None:
        journal.add("instance.after_process_message")

    middleware.after_process_message = after_process_message  # type: ignore[method-assign]
    return middleware


def _recorders(journal: Journal) -> list[Middleware]:
    return [Everything(journal), AckOnly(journal), _instance_hooked(journal)]


def _run_worker(broker: dramatiq.Broker) -> None:
    """Run a real Worker on ``broker`` until its queue is drained and every message acknowledged."""
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        broker.join("default", timeout=10_000)
        worker.join()
    finally:
        worker.stop()


@pytest.fixture
def run_one() -> Iterator[Callable[[dramatiq.Broker, Callable[[], None]], None]]:
    """Run one message of an actor of ``fn`` through a real Worker on a broker, until it is
    acknowledged; every broker given is closed afterwards."""
    brokers: list[dramatiq.Broker] = []

    def run(broker: dramatiq.Broker, fn: Callable[[], None]) -> None:
        brokers.append(broker)
        dramatiq.actor(fn, broker=broker, actor_name="one", max_retries=0).send()
        _run_worker(broker)

    yield run
    for broker in brokers:
        broker.close()


def _soulspot(redis_url: str) -> Any:
    return build_broker(load_settings(REDIS_URL=redis_url))


def _dramatiq(redis_url: str) -> RedisBroker:
    return RedisBroker(url=redis_url, namespace="plain-dramatiq")


def test_every_hook_dramatiq_calls_is_called_in_dramatiqs_order(
    redis_url: str, run_one: Any
) -> None:
    # Given the same recording middleware on Dramatiq's own broker and on the project's
    journals = {"dramatiq": Journal(), "soulspot": Journal()}
    for kind, build in (("dramatiq", _dramatiq), ("soulspot", _soulspot)):
        broker = build(redis_url)
        for middleware in _recorders(journals[kind]):
            broker.add_middleware(middleware)

        # When a real Worker runs one message on each
        run_one(broker, lambda: None)

    # Then the project's broker called exactly the hooks Dramatiq's called, in the same order:
    # class hooks, a one-hook middleware and a hook set on an instance alike
    assert journals["soulspot"].entries == journals["dramatiq"].entries
    assert journals["soulspot"].entries == [
        "everything.before_process_message",
        "instance.after_process_message",
        "everything.after_process_message",
        "everything.before_ack",
        "ack_only.after_ack",
        "everything.after_ack",
    ]


def test_the_base_class_no_ops_are_not_called(
    redis_url: str, run_one: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the base class's no-op acknowledgement hooks, counted
    calls: Counter[str] = Counter()
    running = {"broker": ""}

    def counted(name: str) -> Callable[..., None]:
        def no_op(self: Middleware, broker: Any, message: Any) -> None:
            calls[f"{running['broker']}.{name}"] += 1

        return no_op

    monkeypatch.setattr(Middleware, "before_ack", counted("before_ack"))
    monkeypatch.setattr(Middleware, "after_ack", counted("after_ack"))

    # When a real Worker runs one message on Dramatiq's broker and on the project's
    for name, build in (("dramatiq", _dramatiq), ("soulspot", _soulspot)):
        running["broker"] = name
        run_one(build(redis_url), lambda: None)

    # Then Dramatiq's broker called the no-op of each of its middleware; the project's none
    assert calls["dramatiq.before_ack"] > 0
    assert calls["dramatiq.after_ack"] > 0
    assert calls["soulspot.before_ack"] == calls["soulspot.after_ack"] == 0


def test_a_skip_raised_by_a_before_hook_still_skips_the_message(
    redis_url: str, run_one: Any
) -> None:
    # Given a middleware that skips every message, on the project's broker
    journal, ran = Journal(), threading.Event()

    class Skipping(Middleware):
        def before_process_message(self, broker: Any, message: Any) -> None:
            raise SkipMessage()

        def after_skip_message(self, broker: Any, message: Any) -> None:
            journal.add("skipped")

    broker = _soulspot(redis_url)
    broker.add_middleware(Skipping())

    # When a real Worker takes a message
    run_one(broker, ran.set)

    # Then the actor never ran and the skip was reported once
    assert not ran.is_set()
    assert journal.entries == ["skipped"]


def test_a_failing_hook_is_logged_critical_and_the_next_middleware_still_runs(
    redis_url: str, run_one: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a middleware whose hook raises, before a recording one, on the project's broker
    journal, ran = Journal(), threading.Event()

    class Broken(Middleware):
        def before_process_message(self, broker: Any, message: Any) -> None:
            raise RuntimeError("broken hook")

    broker = _soulspot(redis_url)
    broker.add_middleware(Broken())
    broker.add_middleware(Everything(journal))

    # When a real Worker runs a message
    with caplog.at_level(logging.CRITICAL):
        run_one(broker, ran.set)

    # Then the failure is logged as Dramatiq logs it, and the message and the next hook ran
    assert ran.is_set()
    assert "everything.before_process_message" in journal.entries
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert [r.getMessage().split(" of ")[0] for r in critical] == [
        "Unexpected failure in before_process_message"
    ]


def test_middleware_added_after_messages_ran_is_reached(redis_url: str, run_one: Any) -> None:
    # Given the project's broker that has already run a message
    broker = _soulspot(redis_url)
    run_one(broker, lambda: None)

    # When a recording middleware is added and a real Worker runs another message
    journal = Journal()
    broker.add_middleware(Everything(journal))
    broker.get_actor("one").send()
    _run_worker(broker)

    # Then it sees that message's hooks
    assert journal.entries == [
        "everything.before_process_message",
        "everything.after_process_message",
        "everything.before_ack",
        "everything.after_ack",
    ]


def test_a_signal_of_the_programs_own_reaches_every_middleware_as_in_dramatiq(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the project's broker and a middleware handling a signal Dramatiq does not know
    journal = Journal()

    class Custom(Middleware):
        def after_custom_signal(self, broker: Any) -> None:
            journal.add("custom")

    broker = _soulspot(redis_url)
    try:
        broker.add_middleware(Custom())

        # When that signal is emitted
        with caplog.at_level(logging.CRITICAL):
            broker.emit_after("custom_signal")

        # Then it reached the middleware handling it, and every other one was called as
        # Dramatiq calls it (which fails for a middleware without that hook)
        assert journal.entries == ["custom"]
        critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        assert len(critical) == len(broker.middleware) - 1
    finally:
        broker.close()
