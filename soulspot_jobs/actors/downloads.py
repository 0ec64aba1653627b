"""Track downloads through slskd: ``search_track`` then ``poll_download`` (service ``slskd-api``).

``search_track`` starts an slskd search, then looks at it again every ``search_poll_interval``
by re-enqueueing itself (a running search never parks a worker thread); once complete it ranks
the files (:func:`~soulspot_jobs.clients.slskd.choose_best`), enqueues the best one's download
and hands over to ``poll_download``. That one checks the transfer every
``download_poll_interval`` (a poll is neither a failure nor a retry); on success it enqueues
``enrich_metadata``, on failure it tries the next candidate, up to ``max_candidates``.
"""

from __future__ import annotations

import dataclasses

import dramatiq

from soulspot_jobs.actors.runtime import Runtime
from soulspot_jobs.actors.steps import JobFailed, job_step
from soulspot_jobs.clients.slskd import Candidate, choose_best
from soulspot_jobs.jobs import JobState

SERVICE = "slskd-api"
#: Dramatiq retries of a step failing for another reason than its service (a bug, say).
MAX_RETRIES = 3


def declare(broker: dramatiq.Broker, runtime: Runtime) -> None:
    """Declare ``search_track`` and ``poll_download`` on ``broker``."""
    store, settings = runtime.store, runtime.settings.slskd
    search_poll_ms = int(settings.search_poll_interval * 1000)
    download_poll_ms = int(settings.download_poll_interval * 1000)

    def start_download(job_id: str, candidates: list[dict], index: int) -> None:
        candidate = Candidate(**candidates[index])
        transfer = runtime.slskd.enqueue_download(
            candidate.username, candidate.filename, candidate.size
        )
        store.update(
            job_id,
            state=JobState.DOWNLOADING,
            details={
                "candidate_index": index,
                "username": candidate.username,
                "filename": candidate.filename,
                "transfer_id": transfer.id,
                "transfer_state": transfer.state,
            },
        )
        broker.get_actor("poll_download").send_with_options(args=(job_id,), delay=download_poll_ms)

    @dramatiq.actor(broker=broker, service=SERVICE, max_retries=MAX_RETRIES)
    @job_step(store, JobState.SEARCHING, SERVICE, max_retries=MAX_RETRIES)
    def search_track(job_id: str) -> None:
        job = store.get(job_id)
        search_id = job.details.get("search_id")
        if search_id is None:
            search = runtime.slskd.start_search(job.details["query"])
            store.update(job_id, details={"search_id": search.id})
            search_track.send_with_options(args=(job_id,), delay=search_poll_ms)
            return
        search = runtime.slskd.get_search(search_id)
        if not search.is_complete:
            search_track.send_with_options(args=(job_id,), delay=search_poll_ms)
            return
        ranked = choose_best(
            runtime.slskd.get_responses(search_id), max_candidates=settings.max_candidates
        )
        if not ranked:
            raise JobFailed(
                f"slskd found no audio file for {job.details['query']!r} ({search.state})"
            )
        candidates = [dataclasses.asdict(candidate) for candidate in ranked]
        store.update(job_id, details={"candidates": candidates, "search_state": search.state})
        start_download(job_id, candidates, 0)

    @dramatiq.actor(broker=broker, service=SERVICE, max_retries=MAX_RETRIES)
    @job_step(store, JobState.DOWNLOADING, SERVICE, max_retries=MAX_RETRIES)
    def poll_download(job_id: str) -> None:
        details = store.get(job_id).details
        transfer = runtime.slskd.get_transfer(details["username"], details["transfer_id"])
        store.update(
            job_id,
            details={
                "transfer_state": transfer.state,
                "percent_complete": transfer.percent_complete,
            },
        )
        if transfer.succeeded:
            store.update(job_id, state=JobState.ENRICHING, service="musicbrainz-api")
            broker.get_actor("enrich_metadata").send(job_id)
            return
        if not transfer.failed:
            poll_download.send_with_options(args=(job_id,), delay=download_poll_ms)
            return
        reason = f"{transfer.state}: {transfer.exception or 'no reason given'}"
        failures = [*details.get("download_failures", []), reason]
        store.update(job_id, details={"download_failures": failures})
        next_index = details["candidate_index"] + 1
        if next_index >= len(details["candidates"]):
            raise JobFailed(f"every candidate failed to download; last: {reason}")
        start_download(job_id, details["candidates"], next_index)
