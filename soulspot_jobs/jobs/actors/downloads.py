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
* slskd may lose a transfer before the file is on disk. When it shuts down, it ends its active
  transfers ``Completed, Errored`` ("Application shut down") and, once back, enqueues them
  again under new ids (``Application.cs``); a retention policy or an operator removes a
  transfer (``"removed": true``, still answered by id), and some servers delete it for good
  (404). A transfer that succeeded is a success whatever became of its record; otherwise the
  job enqueues the same file again, which slskd answers with the transfer it already has when
  it enqueued the file itself (so nothing is downloaded twice), at most
  :data:`SAME_FILE_REQUEUES` times, then the next candidate.
* A search slskd ended as it started again (``Completed, TimedOut`` without a response, sooner
  than its timeout of silence allows: :meth:`~soulspot_jobs.clients.slskd.Search.cut_short`)
  is started once more.
* A peer's queue (``Queued, Remotely``) can hold a download for hours: past
  ``SLSKD_REMOTE_QUEUE_TIMEOUT`` the download is cancelled in slskd and the next candidate is
  tried.

What one job learns of a peer, every job knows: each peer has a breaker
(:class:`~soulspot_jobs.circuit_breaker.peers.PeerBreakers`, ``runtime.peers``). The candidates
are chosen with the peers' breakers in view (:func:`~soulspot_jobs.jobs.candidates.choose`: an
ejected peer is skipped, within ``SLSKD_PEER_MAX_EJECTION_PERCENT``); a peer is *picked* when
its download is enqueued (a HALF_OPEN peer's pick is its trial) and its outcome reported when
the transfer ends: a success, the peer's failure (offline, refused, a failed transfer, too long
in its queue), or neither (slskd's own failures, its shutdown, a cancellation).
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import structlog

from soulspot_jobs.circuit_breaker.peers import Pick
from soulspot_jobs.clients.slskd import Candidate, Search, Transfer
from soulspot_jobs.errors import NotFoundError, PeerUnavailableError
from soulspot_jobs.jobs import candidates as choice
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
#: Times a job enqueues the same file again after slskd lost its transfer unfinished (slskd
#: shut down, or removed or deleted the record) before it tries the next candidate.
SAME_FILE_REQUEUES = 3

log = structlog.get_logger("soulspot_jobs.jobs")


def declare(broker: dramatiq.Broker, runtime: Runtime) -> None:
    """Declare ``search_track`` and ``poll_download`` on ``broker``."""
    store, settings = runtime.store, runtime.settings.slskd
    search_poll_ms = int(settings.search_poll_interval * 1000)
    download_poll_ms = int(settings.download_poll_interval * 1000)

    def start_download(job_id: str, start: int) -> None:
        """Enqueue the first candidate from index ``start`` whose peer has not failed this job,
        and hand over to ``poll_download``; a peer that fails now is remembered and skipped. A
        peer ejected since the search was ranked is moved to the end, and tried there."""
        details = store.get(job_id).details
        candidates = list(details["candidates"])
        failed_peers: list[str] = list(details.get("failed_peers", []))
        failures: list[str] = list(details.get("download_failures", []))
        forced: list[str] = list(details.get("forced_peers", []))
        index = start
        while index < len(candidates):
            candidate = Candidate(**candidates[index])
            if candidate.username in failed_peers:
                index += 1
                continue
            pick = runtime.peers.pick(candidate.username, forced=candidate.username in forced)
            if pick is None:  # ejected meanwhile: its files go last (index holds the next one)
                candidates = choice.postpone(candidates, index, candidate.username)
                forced.append(candidate.username)
                store.update(job_id, details={"candidates": candidates, "forced_peers": forced})
                continue
            try:
                transfer = runtime.slskd.enqueue_download(
                    candidate.username, candidate.filename, candidate.size
                )
            except PeerUnavailableError as exc:
                peer_outcome(pick, choice.enqueue_blame(exc))
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
                index += 1
                continue
            except BaseException:
                runtime.peers.released(pick)  # slskd's failure or a hold: not the peer's
                raise
            store.update(
                job_id,
                state=JobState.DOWNLOADING,
                details={
                    "candidate_index": index,
                    "username": candidate.username,
                    "filename": candidate.filename,
                    "transfer_id": transfer.id,
                    "transfer_state": transfer.state,
                    "peer_pick": pick.to_json(),
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
        chosen = choice.choose(responses, runtime.peers, max_candidates=settings.max_candidates)
        if not chosen.candidates:
            if search.cut_short(settings.search_timeout) and not job.details.get("search_again"):
                # slskd ended the search as it started again: search once more
                store.update(job_id, details={"search_id": None, "search_again": search_id})
                search_track.send_with_options(args=(job_id,), delay=search_poll_ms)
                return
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
        store.update(job_id, details={**chosen.details(), "search_state": search.state})
        if chosen.skipped:
            log.info(
                f"Job {job_id}: skipping ejected slskd peers: {'; '.join(chosen.skipped)}",
                event_name="job.peers_skipped",
                job_id=job_id,
                peers=chosen.skipped,
            )
        start_download(job_id, 0)

    def peer_outcome(pick: Pick, blame: str | None) -> None:
        """Report a pick whose transfer did not succeed: the peer's failure for ``blame``, or,
        without one, neither success nor failure."""
        if blame is None:
            runtime.peers.released(pick)
        else:
            runtime.peers.failed(pick, blame)

    def pick_of(details: dict[str, Any]) -> Pick:
        """The pick of the job's current candidate (a job from before peers had none)."""
        return Pick.from_json(details["username"], details.get("peer_pick"))

    def next_candidate(
        job_id: str, details: dict[str, Any], reason: str, blame: str | None = None
    ) -> None:
        """The current candidate failed for ``reason`` (the peer's doing when ``blame`` says
        so): report it to the peer's breaker, remember its peer, try the next."""
        username = details["username"]
        peer_outcome(pick_of(details), blame)
        store.update(
            job_id,
            details={
                "failed_peers": [*details.get("failed_peers", []), username],
                "download_failures": [
                    *details.get("download_failures", []),
                    f"{username}: {reason}",
                ],
                "transfer_id": None,
                "queued_remotely_since": None,
                "same_file_requeues": 0,
                "peer_pick": None,
            },
        )
        start_download(job_id, details["candidate_index"] + 1)

    def enqueue_again(job_id: str, details: dict[str, Any], reason: str) -> None:
        """slskd lost the transfer (it shut down, or removed or deleted the record) before the
        file was on disk: enqueue the same file again and follow what slskd answers. slskd
        does not enqueue a file it is already downloading (it may have enqueued it again
        itself, after a restart) and answers that transfer instead, so nothing is downloaded
        twice. After :data:`SAME_FILE_REQUEUES` times, the next candidate."""
        requeues = int(details.get("same_file_requeues", 0))
        if requeues >= SAME_FILE_REQUEUES:
            next_candidate(job_id, details, f"{reason}; enqueued again {requeues} times")
            return
        candidate = Candidate(**details["candidates"][details["candidate_index"]])
        try:
            transfer = runtime.slskd.enqueue_download(
                candidate.username, candidate.filename, candidate.size
            )
        except PeerUnavailableError as exc:
            blame = choice.enqueue_blame(exc)
            next_candidate(job_id, details, f"{reason}; then {exc.reason}", blame)
            return
        store.update(
            job_id,
            details={
                "transfer_id": transfer.id,
                "transfer_state": transfer.state,
                "same_file_requeues": requeues + 1,
                "queued_remotely_since": None,
                "last_requeue_reason": reason,
            },
        )
        log.info(
            f"Job {job_id}: {reason}; following transfer {transfer.id} of the same file",
            event_name="job.transfer_followed",
            job_id=job_id,
            transfer_id=transfer.id,
            reason=reason,
        )
        broker.get_actor("poll_download").send_with_options(args=(job_id,), delay=download_poll_ms)

    def past_remote_deadline(job_id: str, details: dict[str, Any], transfer: Transfer) -> bool:
        """Whether the download waited in the peer's queue longer than
        ``SLSKD_REMOTE_QUEUE_TIMEOUT``: then it is cancelled in slskd."""
        if not transfer.queued_remotely:
            if details.get("queued_remotely_since") is not None:
                store.update(job_id, details={"queued_remotely_since": None})
            return False
        now = time.time()
        since = details.get("queued_remotely_since")
        if since is None:
            store.update(job_id, details={"queued_remotely_since": now})
            return False
        if now - float(since) < settings.remote_queue_timeout:
            return False
        runtime.slskd.cancel_download(transfer.username or details["username"], transfer.id)
        return True

    @dramatiq.actor(broker=broker, service=SERVICE, max_retries=MAX_RETRIES, **BACKOFF)
    @job_step(store, JobState.DOWNLOADING, SERVICE, max_retries=MAX_RETRIES)
    def poll_download(job_id: str) -> None:
        details = store.get(job_id).details
        if details.get("transfer_id") is None:
            # the last transfer failed, then the next enqueue was deferred: go on from there
            start_download(job_id, details["candidate_index"] + 1)
            return
        try:
            transfer = runtime.slskd.get_transfer(details["username"], details["transfer_id"])
        except NotFoundError:  # deleted for good: whether it had finished is unknown
            enqueue_again(job_id, details, "slskd no longer has the transfer")
            return
        store.update(
            job_id,
            details={
                "transfer_state": transfer.state,
                "percent_complete": transfer.percent_complete,
            },
        )
        if transfer.succeeded:  # removed afterwards or not, the file is on disk
            runtime.peers.succeeded(pick_of(details))
            store.update(job_id, state=JobState.ENRICHING, service="musicbrainz-api")
            broker.get_actor("enrich_metadata").send(job_id)
            return
        if transfer.shut_down:
            enqueue_again(job_id, details, "slskd shut down during the transfer")
            return
        if transfer.removed and not transfer.done:
            enqueue_again(job_id, details, "slskd removed the unfinished transfer")
            return
        if not transfer.failed:
            if past_remote_deadline(job_id, details, transfer):
                timeout = settings.remote_queue_timeout
                reason = f"queued at the peer for more than {timeout:g} s; cancelled"
                next_candidate(job_id, details, reason, f"queued over {timeout:g} s")
                return
            poll_download.send_with_options(args=(job_id,), delay=download_poll_ms)
            return
        reason = f"{transfer.state}: {transfer.exception or 'no reason given'}"
        next_candidate(job_id, details, reason, choice.transfer_blame(transfer))


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
