"""Releasing deferred messages held in a delay queue's memory: which, when, in what order, and
with Dramatiq's ``task_done`` accounting intact. The delay queue is Dramatiq's own
``PriorityQueue`` of ``_WorkQueueItem`` (the worker's integration is in
``tests/middleware/test_release.py``)."""

from __future__ import annotations

import threading
from queue import PriorityQueue
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.worker import _WorkQueueItem

from soulspot_jobs.deferral.delay_queues import hold_again, move_due, release
from soulspot_jobs.deferral.options import DEFERRED_BY, RELEASE_FROM

NOW = 1_000_000
STAGGER = 50


class FakeConsumer:
    """What the functions use of a ConsumerThread: its delay queue, broker and ack."""

    def __init__(self, broker: dramatiq.Broker | None = None) -> None:
        self.delay_queue: PriorityQueue[_WorkQueueItem] = PriorityQueue()
        self.broker = broker
        self.acked: list[str] = []
        self.queue_name = "default.DQ"

    def hold(self, message_id: str, eta: int, **options: Any) -> None:
        """Put a delayed message in the queue as Dramatiq's consumer does (priority = eta)."""
        message = dramatiq.Message(
            queue_name="default.DQ",
            actor_name="download",
            args=(),
            kwargs={},
            options={"eta": eta, **options},
            message_id=message_id,
        )
        self.delay_queue.put(_WorkQueueItem(eta, MessageProxy(message)))

    def post_process_message(self, message: Any) -> None:
        self.acked.append(message.message_id)

    def etas(self) -> dict[str, int]:
        with self.delay_queue.mutex:
            return {item.message.message_id: item.priority for item in self.delay_queue.queue}


def deferred(service: str = "slskd-api", release_from: int | None = NOW - 5_000) -> dict:
    return {DEFERRED_BY: service, RELEASE_FROM: release_from}


def test_released_messages_get_staggered_etas_in_the_order_of_their_own() -> None:
    # Given three slskd messages deferred for a minute, held by two delay queues
    steps, new = FakeConsumer(), FakeConsumer()
    steps.hold("b", NOW + 60_200, **deferred())
    steps.hold("c", NOW + 60_300, **deferred())
    new.hold("a", NOW + 60_100, **deferred())

    # When slskd's breaker closes
    released = release([steps, new], "slskd-api", now=NOW, stagger=STAGGER)

    # Then the earliest runs now and each next one STAGGER ms later, across both queues
    assert new.etas() == {"a": NOW}
    assert steps.etas() == {"b": NOW + STAGGER, "c": NOW + 2 * STAGGER}
    assert released == [(NOW, new), (NOW + STAGGER, steps), (NOW + 2 * STAGGER, steps)]


def test_a_release_never_makes_a_message_later_and_leaves_other_messages_alone() -> None:
    # Given slskd messages (one due sooner than its slot would be), another service's, a
    # back-pressure deferral, a plain retry and a message with no deferral at all
    consumer = FakeConsumer()
    consumer.hold("soon", NOW + 10, **deferred())
    for n in range(3):
        consumer.hold(f"later-{n}", NOW + 5_000, **deferred())
    consumer.hold("spotify", NOW + 5_000, **deferred("spotify-api"))
    consumer.hold("busy", NOW + 5_000, **deferred(release_from=None))
    consumer.hold("retry", NOW + 5_000, retries=1)

    # When slskd's breaker closes
    release([consumer], "slskd-api", now=NOW, stagger=STAGGER)

    # Then no slskd message runs later than its own eta, and the others keep theirs
    assert consumer.etas() == {
        "soon": NOW,
        "later-0": NOW + STAGGER,
        "later-1": NOW + 2 * STAGGER,
        "later-2": NOW + 3 * STAGGER,
        "spotify": NOW + 5_000,
        "busy": NOW + 5_000,
        "retry": NOW + 5_000,
    }


def test_a_message_is_released_no_earlier_than_its_release_from() -> None:
    # Given a message that may run in 2 s at the earliest, waiting for slskd's breaker for a
    # minute
    consumer = FakeConsumer()
    consumer.hold("patient", NOW + 60_000, **deferred(release_from=NOW + 2_000))

    # When slskd's breaker closes now
    release([consumer], "slskd-api", now=NOW, stagger=STAGGER)

    # Then it runs in 2 s, not at once
    assert consumer.etas() == {"patient": NOW + 2_000}


def test_a_release_keeps_the_queue_a_heap_and_its_task_accounting_unchanged() -> None:
    # Given a delay queue with 50 deferred messages and 50 others, as Worker.join sees it
    consumer = FakeConsumer()
    for n in range(50):
        consumer.hold(f"slskd-{n}", NOW + 60_000 + n, **deferred())
        consumer.hold(f"other-{n}", NOW + 1_000 + n, **deferred("spotify-api"))
    unfinished = consumer.delay_queue.unfinished_tasks

    # When slskd's breaker closes
    release([consumer], "slskd-api", now=NOW, stagger=STAGGER)

    # Then nothing was taken out or added, and the queue hands them out in the new order
    assert consumer.delay_queue.unfinished_tasks == unfinished == 100
    order = []
    while not consumer.delay_queue.empty():
        item = consumer.delay_queue.get_nowait()
        order.append(item.priority)
        consumer.delay_queue.task_done()
    assert order == sorted(order)
    assert order[:21] == [NOW + n * STAGGER for n in range(21)]  # before the first spotify one
    consumer.delay_queue.join()  # returns: every get was matched by a task_done


@pytest.mark.parametrize("moved_first", [0, 2], ids=["none moved", "two moved"])
def test_messages_released_and_not_moved_wait_for_their_own_eta_again(moved_first: int) -> None:
    # Given four released slskd messages, some already moved on, and a spotify one
    consumer = FakeConsumer()
    for n in range(4):
        consumer.hold(f"slskd-{n}", NOW + 60_000, **deferred())
    consumer.hold("spotify", NOW + 60_000, **deferred("spotify-api"))
    release([consumer], "slskd-api", now=NOW, stagger=STAGGER)
    for _ in range(moved_first):
        consumer.delay_queue.get_nowait()
        consumer.delay_queue.task_done()

    # When slskd's breaker opens again
    held = hold_again([consumer], "slskd-api")

    # Then the ones still held are back at their own eta
    assert held == 4 - moved_first
    assert set(consumer.etas().values()) == {NOW + 60_000}


def test_moving_due_messages_enqueues_them_on_their_queue_and_acks_them_once() -> None:
    # Given a delay queue holding one due and one future message, read by its own consumer too
    broker = StubBroker()
    broker.declare_queue("default")
    consumer = FakeConsumer(broker)
    consumer.hold("due", 0, **deferred())
    consumer.hold("future", 2**62, **deferred())

    # When the due ones are moved from two threads at once
    threads = [threading.Thread(target=move_due, args=(consumer,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then the due one is on its queue, without eta, acknowledged once; the other is still held
    (enqueued,) = [dramatiq.Message.decode(raw) for raw in broker.queues["default"].queue]
    assert enqueued.message_id == "due"
    assert "eta" not in enqueued.options
    assert consumer.acked == ["due"]
    assert list(consumer.etas()) == ["future"]
    assert consumer.delay_queue.unfinished_tasks == 1


def test_a_message_whose_move_fails_stays_in_the_delay_queue() -> None:
    # Given a due message and a broker that cannot enqueue
    class Refusing(StubBroker):
        def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
            raise dramatiq.errors.ConnectionClosed(OSError("Redis went away"))

    consumer = FakeConsumer(Refusing())
    consumer.hold("due", 0, **deferred())

    # When it is moved, the error is raised and the message is still there, not acked
    with pytest.raises(dramatiq.errors.ConnectionClosed):
        move_due(consumer)
    assert list(consumer.etas()) == ["due"]
    assert consumer.acked == []
    assert consumer.delay_queue.unfinished_tasks == 1
