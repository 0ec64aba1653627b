"""The deferred messages a worker process holds in memory, released before their eta.

Dramatiq's worker keeps each delayed message it fetched in the memory of the consumer thread of
its delay queue (``ConsumerThread.delay_queue``, a ``PriorityQueue`` of items whose priority is
the message's eta in epoch milliseconds) and moves it to its queue once due. Releasing a
service's deferred messages early gives their items an earlier priority *in place*, under the
queue's own lock: no item leaves the queue, so Dramatiq's ``task_done`` accounting (which
``Worker.join`` waits on) and the broker's record of the messages this process holds
(:class:`~soulspot_jobs.broker.redis.RecoveringRedisBroker`) never see a gap. The message keeps
its own eta in its ``eta`` option, which is how an early release is undone (:func:`hold_again`).

Only messages that wait for their service to be back are released: those whose options name the
service (``DEFERRED_BY``) and say from when they may run (``RELEASE_FROM``, see
:mod:`.options`). None is given a time later than its own eta, so a release never delays one.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable
from queue import Empty
from typing import Any

from dramatiq.common import current_millis, q_name

from soulspot_jobs.deferral.options import DEFERRED_BY, RELEASE_FROM

#: A Dramatiq ``ConsumerThread`` of a delay queue (typed loosely: Dramatiq's class is internal).
ConsumerThread = Any


def release(
    threads: Iterable[ConsumerThread], service: str, *, now: int, stagger: int
) -> list[tuple[int, ConsumerThread]]:
    """Give the deferred messages of ``service`` held by ``threads`` new etas, in the order of
    their own: the first ``now``, each next one ``stagger`` ms later, but none later than its
    own eta nor earlier than its ``RELEASE_FROM`` (epoch milliseconds throughout).

    Returns ``(new eta, thread)`` of each message released, earliest first.
    """
    waiting: list[tuple[int, int, str, ConsumerThread]] = []
    for thread in threads:
        queue = thread.delay_queue
        with queue.mutex:
            for item in queue.queue:
                release_from = _release_from(item.message, service)
                if release_from is not None:
                    waiting.append((item.priority, release_from, item.message.message_id, thread))
    waiting.sort(key=lambda entry: entry[0])
    new_etas: dict[ConsumerThread, dict[str, int]] = {}
    for rank, (eta, release_from, message_id, thread) in enumerate(waiting):
        at = max(release_from, min(eta, now + rank * stagger))
        if at < eta:
            new_etas.setdefault(thread, {})[message_id] = at
    released = []
    for thread, etas in new_etas.items():

        def earlier(item: Any, etas: dict[str, int] = etas) -> int | None:
            at = etas.get(item.message.message_id)
            return at if at is not None and at < item.priority else None

        released.extend((at, thread) for at in _reschedule(thread.delay_queue, earlier))
    released.sort(key=lambda entry: entry[0])
    return released


def hold_again(threads: Iterable[ConsumerThread], service: str) -> int:
    """Give the released messages of ``service`` not yet moved their own etas back (its breaker
    opened again); returns how many."""
    held = 0
    for thread in threads:

        def own_eta(item: Any) -> int | None:
            if _release_from(item.message, service) is None:
                return None
            eta = item.message.options.get("eta")
            return eta if isinstance(eta, int | float) and eta > item.priority else None

        held += len(_reschedule(thread.delay_queue, own_eta))
    return held


def move_due(thread: ConsumerThread) -> int:
    """Move the due messages of ``thread``'s delay queue to their queue now; returns how many.

    This is what the consumer thread does itself (``ConsumerThread.handle_delayed_messages``):
    enqueue a copy without its eta, then acknowledge the delayed message. Here it runs from
    another thread, which must not lose a message the consumer would have kept: one whose
    enqueue fails goes back to the delay queue (and the error is raised), where the consumer
    thread moves it later.
    """
    queue = thread.delay_queue
    moved = 0
    while True:
        try:
            item = queue.get_nowait()
        except Empty:
            return moved
        if item.priority > current_millis():
            queue.put(item)
            queue.task_done()
            return moved
        message = item.message
        ready = message.copy(queue_name=q_name(message.queue_name))
        ready.options.pop("eta", None)
        try:
            thread.broker.enqueue(ready)
        except BaseException:
            queue.put(item)
            queue.task_done()
            raise
        thread.post_process_message(message)
        queue.task_done()
        moved += 1


def _release_from(message: Any, service: str) -> int | None:
    """From when ``message`` may run once ``service``'s breaker closed; ``None``: it waits for
    its eta (another service's, back-pressure, a plain retry)."""
    options = message.options
    if options.get(DEFERRED_BY) != service:
        return None
    release_from = options.get(RELEASE_FROM)
    return int(release_from) if isinstance(release_from, int | float) else None


def _reschedule(queue: Any, new_eta: Any) -> list[int]:
    """Under ``queue``'s lock, give each item for which ``new_eta(item)`` is a number that
    priority; returns the priorities given. The heap is restored before the lock is let go."""
    given = []
    with queue.mutex:
        items = queue.queue
        for index, item in enumerate(items):
            at = new_eta(item)
            if at is not None:
                items[index] = dataclasses.replace(item, priority=int(at))
                given.append(int(at))
        if given:
            heapq.heapify(items)
    return given
