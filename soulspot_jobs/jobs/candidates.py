"""Which of a search's files a download job tries, in which order, and what each outcome says of
the peer that offered it.

The glue between the download steps and the per-peer breakers
(:class:`~soulspot_jobs.circuit_breaker.peers.PeerBreakers`):

* :func:`choose` ranks every usable file of a search (:func:`~soulspot_jobs.clients.slskd.
  choose_best`), screens their peers in one round trip, and keeps the ``max_candidates`` best
  of the peers not ejected; ejected peers beyond ``SLSKD_PEER_MAX_EJECTION_PERCENT`` are kept,
  last, so that ejection never leaves a search without a candidate.
* :func:`enqueue_blame` and :func:`transfer_blame` say whether a failure is the peer's (offline,
  unreachable, timed out, rejected, a failed transfer) or not (slskd's own failures, its
  shutdown, a cancellation): only the peer's count against its breaker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from soulspot_jobs.circuit_breaker.peers import PeerBreakers, PeerStatus
from soulspot_jobs.clients.slskd import FILE_LIMIT, Candidate, PeerResponse, Transfer, choose_best
from soulspot_jobs.errors import PeerUnavailableError

#: Flags of a failed transfer that the remote peer caused (``Cancelled`` is our own or an
#: operator's doing; a shutdown's ``Errored`` is slskd's, see :func:`transfer_blame`).
PEER_FAILURE_FLAGS = frozenset({"Rejected", "TimedOut", "Errored", "Aborted"})
#: Short reasons for slskd's messages about a peer, first match wins (lower case phrases): the
#: breaker keeps a short reason, the job record slskd's whole message.
SHORT_REASONS = (
    ("appears to be offline", "offline"),
    ("is offline", "offline"),
    ("failed to connect to user", "unreachable"),
    ("failed to retrieve endpoint", "unreachable"),
    ("direct or indirect message connection", "unreachable"),
    ("timed out", "timed out"),
    ("connection refused", "refused"),
    ("transfer rejected", "rejected"),
)


@dataclass(frozen=True)
class Choice:
    """The candidates a job tries, and what the peer breakers had to say about them."""

    #: Best first: files of healthy peers, then those of ejected peers the cap kept.
    candidates: list[Candidate]
    #: Peers among the candidates that are ejected, tried anyway (last).
    forced: list[str]
    #: Ejected peers left out, as ``user: reason (N s left)`` for the job's record.
    skipped: list[str]

    def details(self) -> dict[str, Any]:
        """What the job's record keeps of it."""
        return {
            "candidates": [dataclasses.asdict(candidate) for candidate in self.candidates],
            "forced_peers": self.forced,
            "skipped_peers": self.skipped,
        }


def choose(
    responses: Iterable[PeerResponse], peers: PeerBreakers, *, max_candidates: int
) -> Choice:
    """The ``max_candidates`` files to try, best first, their peers screened (one round trip)."""
    ranked = choose_best(responses, max_candidates=FILE_LIMIT)
    if not ranked:
        return Choice([], [], [])
    screening = peers.screen(candidate.username for candidate in ranked)
    chosen = screening.arrange(ranked, lambda candidate: candidate.username)[:max_candidates]
    users = {candidate.username for candidate in chosen}
    forced = [status.username for status in screening.kept if status.username in users]
    return Choice(chosen, forced, [_described(status) for status in screening.skipped])


def postpone(candidates: list[Any], index: int, username: str) -> list[Any]:
    """``candidates`` with those of ``username`` from ``index`` on moved to the end, in order: a
    peer ejected since the search was ranked is tried last."""
    head, tail = candidates[:index], candidates[index:]
    theirs = [c for c in tail if Candidate(**c).username == username]
    return [*head, *(c for c in tail if Candidate(**c).username != username), *theirs]


def enqueue_blame(exc: PeerUnavailableError) -> str | None:
    """The reason to count against the peer for an enqueue slskd refused, or ``None`` when it is
    not the peer's doing.

    The client raises :class:`PeerUnavailableError` with the HTTP status when slskd's answer
    blamed the remote user (offline, unreachable, timed out, refused: the 500 or 404 that
    :func:`~soulspot_jobs.clients.slskd.peer_failure_reason` recognised), and without one when
    slskd itself declined to enqueue the file (listed as failed with no transfer to follow).
    """
    if exc.status is None:
        return None
    return short_reason(exc.reason)


def transfer_blame(transfer: Transfer) -> str | None:
    """The reason to count against the peer for a failed transfer (rejected, timed out, errored,
    aborted), or ``None``: it did not fail, slskd ended it shutting down, or it was cancelled."""
    if not transfer.failed or transfer.shut_down:
        return None
    flags = {part.strip() for part in transfer.state.split(",")}
    blamed = sorted(flags & PEER_FAILURE_FLAGS)
    if not blamed:
        return None
    said = transfer.exception or "no reason given"
    return f"transfer {'/'.join(blamed).lower()}: {said}"


def short_reason(text: str) -> str:
    """A few words for slskd's message about a peer (``offline``, ``unreachable``, ...), or the
    message itself when none fits (the breaker cuts it to a few dozen bytes)."""
    folded = text.casefold()
    return next((short for phrase, short in SHORT_REASONS if phrase in folded), text)


def _described(status: PeerStatus) -> str:
    left = f", {status.retry_after:.0f} s left" if status.retry_after is not None else ""
    return f"{status.username}: {status.reason or 'failing'}{left}"
