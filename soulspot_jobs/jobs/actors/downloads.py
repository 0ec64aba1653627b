"""Track downloads through slskd: ``search_track`` then ``poll_download`` (service ``slskd-api``).

``search_track`` starts an slskd search, then looks at it again every ``search_poll_interval``
by re-enqueueing itself (a running search never parks a worker thread); once complete it ranks
the files (:func:`~soulspot_jobs.clients.slskd.choose_best`), enqueues the best one's download
and hands over to ``poll_download``. That one checks the transfer every
``download_poll_interval`` (a poll is neither a failure nor a retry); on success it enqueues
``enrich_metadata``, on failure it tries the next candidate, up to ``max_candidates``.

Two things real slskd does are handled here:

* slskd marks a search complete a moment before it stores the responses with its end
  (``endedAt``). An empty answer is believed only once that end is recorded; before that the
  step looks again, for at most :data:`EMPTY_ANSWER_PATIENCE` seconds.
* A candidate's peer may be offline, unreachable or refuse (:class:`PeerUnavailableError`):
  that is the peer's failure, not slskd's. The job remembers the peer in its ``failed_peers``,
  never tries it again, and goes on with the next candidate; it fails only when no candidate is
  left, with every reason.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import dramatiq
import structlog

from soulspot_jobs.clients.slskd import Candidate, Search, choose_best
from soulspot_jobs.errors import PeerUnavailableError
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.jobs.runtime import Runtime
from soulspot_jobs.jobs.steps import BACKOFF, JobFailed, job_step

SERVICE = "slskd-api"
#: Dramatiq retries of a step failing for another reason than its service (a bug, say).
MAX_RETRIES = 3
#: Seconds a job keeps looking again (every ``search_poll_interval``) at a complete search
#: whose answer has no usable file, while slskd has not recorded the search's end or has
#: counted responses it has not stored yet, before it concludes "no file found".
EMPTY_ANSWER_PATIENCE = 10.0

log = structlog.get_logger("soulspot_jobs.jobs")


def declare(broker: dramatiq.Broker, runtime: Runtime) -> None:
    """Declare ``search_track`` and ``poll_download`` on ``broker``."""
    store, settings = runtime.store, runtime.settings.slskd
    search_poll_ms = int(settings.search_poll_interval * 1000)
    download_poll_ms = int(settings.download_poll_interval * 1000)

    def start_download(job_id: str, start: int) -> None:
        """Enqueue the first candidate from index ``start`` whose peer has not failed this job,
        and hand over to ``poll_download``; a peer that fails now is remembered and skipped."""
        details = store.get(job_id).details
        candidates = details["candidates"]
        failed_peers: list[str] = list(details.get("failed_peers", []))
        failures: list[str] = list(details.get("download_failures", []))
        for index in range(start, len(candidates)):
            candidate = Candidate(**candidates[index])
            if candidate.username in failed_peers:
                continue
            try:
                transfer = runtime.slskd.enqueue_download(
                    candidate.username, candidate.filename, candidate.size
                )
            except PeerUnavailableError as exc:
                failed_peers.append(candidate.username)
                failures.append(f"{candidate.username}: {exc.reason}")
                store.update(
                    job_id,
                    details={
                        "candidate_index": index,
                        "failed_peers": failed_peers,
                        "download_failures": failures,
                    },
                )
                log.info(
                    f"Job {job_id}: peer {candidate.username!r} is unavailable, trying the next",
                    event_name="job.peer_unavailable",
                    job_id=job_id,
                    username=candidate.username,
                    reason=exc.reason,
                )
                continue
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
            broker.get_actor("poll_download").send_with_options(
                args=(job_id,), delay=download_poll_ms
            )
            return
        raise JobFailed(f"every candidate failed: {'; '.join(failures) or 'none was left'}")

    @dramatiq.actor(broker=broker, service=SERVICE, max_retries=MAX_RETRIES, **BACKOFF)
    @job_step(store, JobState.SEARCHING, SERVICE, max_retries=MAX_RETRIES)
    def search_track(job_id: str) -> None:
        job = store.get(job_id)
        if job.details.get("candidates"):
            if "transfer_id" not in job.details:
                # ranked before, then deferred while enqueuing: go on where it stopped
                start_download(job_id, job.details.get("candidate_index", 0))
            return  # else poll_download is in charge of the transfer
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
        responses = runtime.slskd.get_responses(search_id)
        ranked = choose_best(responses, max_candidates=settings.max_candidates)
        if not ranked:
            first_empty = float(job.details.get("first_empty_read", time.time()))
            patient = time.time() - first_empty < EMPTY_ANSWER_PATIENCE
            if patient and _may_still_come(search, responses):
                reads = int(job.details.get("empty_reads", 0)) + 1
                store.update(
                    job_id, details={"empty_reads": reads, "first_empty_read": first_empty}
                )
                search_track.send_with_options(args=(job_id,), delay=search_poll_ms)
                return
            raise JobFailed(_no_file_reason(job.details["query"], search))
        candidates = [dataclasses.asdict(candidate) for candidate in ranked]
        store.update(job_id, details={"candidates": candidates, "search_state": search.state})
        start_download(job_id, 0)

    @dramatiq.actor(broker=broker, service=SERVICE, max_retries=MAX_RETRIES, **BACKOFF)
    @job_step(store, JobState.DOWNLOADING, SERVICE, max_retries=MAX_RETRIES)
    def poll_download(job_id: str) -> None:
        details = store.get(job_id).details
        if details.get("transfer_id") is None:
            # the last transfer failed, then the next enqueue was deferred: go on from there
            start_download(job_id, details["candidate_index"] + 1)
            return
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
        failed: dict[str, Any] = {
            "failed_peers": [*details.get("failed_peers", []), details["username"]],
            "download_failures": [
                *details.get("download_failures", []),
                f"{details['username']}: {reason}",
            ],
            "transfer_id": None,
        }
        store.update(job_id, details=failed)
        start_download(job_id, details["candidate_index"] + 1)


def _may_still_come(search: Search, responses: list[Any]) -> bool:
    """Whether an answer without a usable file may not be slskd's last word yet: the search's
    end is not recorded (responses are stored with it), or slskd counted responses it has not
    stored."""
    return not search.ended or (not responses and search.response_count > 0)


def _no_file_reason(query: str, search: Search) -> str:
    reason = f"slskd found no audio file for {query!r} ({search.state})"
    if not search.ended:
        reason += f"; slskd had not recorded the search's end after {EMPTY_ANSWER_PATIENCE:g} s"
    return reason
