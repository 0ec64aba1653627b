"""The two Dramatiq queues of the jobs, so that work in progress goes before new work.

A job's first step (``search_track`` of a new download, ``import_playlist``, ``enrich_metadata``
of an enrichment job) is sent to ``NEW_JOBS_QUEUE``; every later step (search and download
polls, the enrichment after a download, each step's deferred or retried copy) goes to
``STEPS_QUEUE``, the queue the actors are declared on.

Why two queues and not one: a Dramatiq worker runs one consumer per queue, and each consumer
holds at most ``prefetch`` (2 × worker threads) of its queue's messages in the worker's shared
work queue at a time. With every message on one FIFO queue, a poll due in 1 s is put at the tail
of the whole backlog of new jobs and waits for all of it; with two queues, a due step waits
behind at most one prefetch of new jobs, however long their backlog. Priorities cannot do this
on their own: Dramatiq orders its work queue by the *actor's* priority, and ``search_track`` is
both a first step and a poll.
"""

from __future__ import annotations

import dramatiq

#: Queue of the jobs' first steps (the backlog of new work).
NEW_JOBS_QUEUE = "jobs.new"
#: Queue of every later step: Dramatiq's default queue, which the actors are declared on.
STEPS_QUEUE = "default"


def declare_queues(broker: dramatiq.Broker) -> None:
    """Declare ``NEW_JOBS_QUEUE`` (no actor declares it), so every worker consumes it too."""
    broker.declare_queue(NEW_JOBS_QUEUE)


def send_first_step(actor: dramatiq.Actor, job_id: str) -> dramatiq.Message:
    """Enqueue ``actor``'s message for the new job ``job_id`` on ``NEW_JOBS_QUEUE``."""
    message = actor.message(job_id).copy(queue_name=NEW_JOBS_QUEUE)
    return actor.broker.enqueue(message)
