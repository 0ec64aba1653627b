"""Client of the slskd daemon's REST API (v0): searches, their responses, and downloads.

slskd answers 429 when it cannot take one more operation of a kind right now (one search start
at a time, two enqueue requests at a time). That is back-pressure, not an outage: those two
calls raise :class:`RetryLater` instead of :class:`ServiceUnavailableError`, so the job is
deferred and the ``slskd-api`` circuit breaker counts nothing.

A peer is not slskd. slskd's enqueue endpoint answers 500 with the exception's message for
whatever went wrong, including the remote user being offline, unreachable or too slow; those
answers are told apart from slskd's own failures in one place, :func:`peer_failure_reason`, and
raise :class:`PeerUnavailableError` (never counted by the breaker) instead.

What slskd's source says, and this client relies on: a search's state reads ``Completed`` a
moment before its responses are stored together with ``endedAt`` (so an empty answer means
"no results" only once ``endedAt`` is there); the enqueue answer's ``failed`` list holds file
names (0.24-0.25) or objects serialized as ``{}`` (0.26), and older versions answer a bare 201;
a file already being downloaded is listed there ("Skipped: Already in progress") and its
existing transfer is the one to follow; new transfers start ``"Queued, Locally"``; and null
fields are left out of every answer.

:func:`choose_best` ranks the files peers offer for one track; see its docstring for the rules.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from soulspot_jobs.clients.guarded import GuardedClient
from soulspot_jobs.clients.http import (
    AsyncUpstreamHttp,
    Flow,
    Pause,
    Request,
    UpstreamHttp,
    drive,
    drive_async,
    json_body,
)
from soulspot_jobs.errors import (
    NotFoundError,
    PeerUnavailableError,
    RetryLater,
    ServiceOutage,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamRequestError,
)
from soulspot_jobs.settings import SlskdSettings

__all__ = [
    "AUDIO_EXTENSIONS",
    "LOSSLESS_EXTENSIONS",
    "SERVICE",
    "AsyncSlskdClient",
    "Candidate",
    "CircuitBreakerSlskdClient",
    "EnqueueFailure",
    "PeerResponse",
    "Search",
    "SearchResults",
    "SharedFile",
    "SlskdClient",
    "Transfer",
    "choose_best",
    "parse_failed",
    "peer_failure_reason",
]

#: The circuit breaker's name and the ``service`` of every error raised here.
SERVICE = "slskd-api"
#: Peer responses after which slskd ends a search.
RESPONSE_LIMIT = 100
#: Files (over all responses) after which slskd ends a search.
FILE_LIMIT = 10_000
#: Seconds past its ``search_timeout`` that :meth:`SlskdClient.search` waits for slskd to end a
#: search before calling it slskd's failure.
SEARCH_END_GRACE = 10.0
#: A search that ended without responses this many seconds sooner than its timeout of silence
#: allows was cut short by slskd (see :meth:`Search.cut_short`).
SEARCH_CUT_SHORT_MARGIN = 1.0
#: Seconds to wait before trying again when a 429 came without ``Retry-After``.
DEFAULT_RETRY_AFTER = 1.0
#: Least seconds an enqueue request is given: slskd answers only once it reached the peer,
#: which takes up to its connection timeout (``SLSK_CONNECTION_TIMEOUT``, 10 s by default) plus
#: the Soulseek server's answer for the peer's address (5 s). Our own timeout there would be
#: counted as slskd failing, when it is only a slow peer.
ENQUEUE_TIMEOUT = 30.0
#: Lower-case phrases of the Soulseek library's and slskd's messages that blame the remote peer
#: (offline, no connection, no answer in time, refused; slskd 0.23 and older waited for the
#: peer's "Transfer rejected: ..." too); an enqueue answered 500 with one of them is a peer's
#: failure. Every phrase holds a space, so none can come from a user name in the request's
#: path, which is URL-quoted.
PEER_FAILURE_PHRASES = (
    "appears to be offline",
    "is offline",
    "failed to connect to user",
    "failed to retrieve endpoint for user",
    "direct or indirect message connection",
    "timed out",
    "transfer rejected",
    "connection refused",
)

#: Lower-case phrase of the Soulseek library's message when slskd is not logged in to the
#: Soulseek network ("The server connection must be connected and logged in to ..."): slskd
#: answers a search 409 with it (``SearchesController``) and an enqueue 500.
LOGGED_OUT_PHRASE = "must be connected and logged in"
#: The breaker's reason while slskd is logged out.
LOGGED_OUT = "not logged in to Soulseek"
#: The variable holding the credentials slskd refuses with a 401.
CREDENTIALS = "SLSKD_API_KEY"
#: slskd's ``exception`` of the transfers it found active when it started again: it enqueues
#: them again, under new ids, once logged in (``Application.cs``).
SHUT_DOWN = "Application shut down"
#: The enqueue endpoint of slskd 0.26 and later; older versions take ``downloads/{username}``.
BATCHES_PATH = "/api/v0/transfers/downloads/batches"

#: File extensions (lower case, no dot) that hold audio a track can be made of.
AUDIO_EXTENSIONS = frozenset(
    {"flac", "mp3", "m4a", "aac", "ogg", "oga", "opus", "wav", "alac", "ape", "aiff", "aif", "wv"}
)
#: Extensions whose audio is lossless whatever their metadata says.
LOSSLESS_EXTENSIONS = frozenset({"flac", "wav", "alac", "ape", "aiff", "aif", "wv"})

_WAITING_FLAGS = frozenset({"Requested", "Queued"})
_ACTIVE_FLAGS = frozenset({"Initializing", "InProgress"})


def _flags(state: str) -> frozenset[str]:
    """The flags of a comma-joined slskd state: ``"Queued, Remotely"`` -> {Queued, Remotely}."""
    return frozenset(part.strip() for part in state.split(",") if part.strip())


@dataclass(frozen=True)
class Search:
    """One search as slskd reports it (without its responses)."""

    id: str
    search_text: str
    #: Comma-joined flags: ``"InProgress"``, ``"Completed, TimedOut"``, ...
    state: str
    is_complete: bool
    response_count: int
    file_count: int
    #: ISO time slskd recorded the search's end, with its responses; absent until then.
    ended_at: str | None = None
    #: ISO time slskd started the search (``None`` if it sent none).
    started_at: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Search:
        state = str(data.get("state") or "")
        is_complete = data.get("isComplete")
        return cls(
            id=str(data["id"]),
            search_text=str(data.get("searchText") or ""),
            state=state,
            is_complete="Completed" in _flags(state) if is_complete is None else bool(is_complete),
            response_count=int(data.get("responseCount") or 0),
            file_count=int(data.get("fileCount") or 0),
            ended_at=data.get("endedAt") or None,
            started_at=data.get("startedAt") or None,
        )

    def cut_short(self, search_timeout: float) -> bool:
        """Ended ``TimedOut`` without a response well before ``search_timeout`` (seconds) of
        silence could have passed: slskd ended it as it started again after a shutdown
        (``Application.cs`` marks every unfinished search ``Completed, TimedOut`` and drops its
        responses), not the Soulseek network."""
        if not self.ended or self.response_count or "TimedOut" not in _flags(self.state):
            return False
        started, ended = _instant(self.started_at), _instant(self.ended_at)
        if started is None or ended is None:
            return False
        return (ended - started).total_seconds() < search_timeout - SEARCH_CUT_SHORT_MARGIN

    @property
    def ended(self) -> bool:
        """slskd stored the search's end and its responses: an empty answer is now final.

        ``is_complete`` alone is not enough: slskd marks the search ``Completed`` a moment
        before it stores the responses (and ``endedAt``) with it.
        """
        return self.is_complete and self.ended_at is not None


@dataclass(frozen=True)
class SharedFile:
    """One file a peer shares; numeric metadata is ``None`` when the peer did not send it."""

    #: The peer's full path, Windows style (``@@share\\Music\\Artist\\Album\\01 - Title.flac``).
    filename: str
    #: Bytes.
    size: int
    #: Lower case, without the dot; taken from the file name when slskd sends none.
    extension: str
    #: kbit/s.
    bit_rate: int | None
    #: Bits per sample (lossless files).
    bit_depth: int | None
    #: Samples per second (Hz).
    sample_rate: int | None
    #: Seconds.
    length: int | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SharedFile:
        filename = str(data["filename"])
        return cls(
            filename=filename,
            size=int(data.get("size") or 0),
            extension=_extension(data.get("extension"), filename),
            bit_rate=_optional_int(data.get("bitRate")),
            bit_depth=_optional_int(data.get("bitDepth")),
            sample_rate=_optional_int(data.get("sampleRate")),
            length=_optional_int(data.get("length")),
        )


@dataclass(frozen=True)
class PeerResponse:
    """What one peer answered to a search: its unlocked files and how busy it is."""

    username: str
    has_free_upload_slot: bool
    #: Uploads waiting before ours at this peer.
    queue_length: int
    #: Bytes per second the peer reports it uploads at.
    upload_speed: int
    files: tuple[SharedFile, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PeerResponse:
        return cls(
            username=str(data["username"]),
            has_free_upload_slot=bool(data.get("hasFreeUploadSlot", False)),
            queue_length=int(data.get("queueLength") or 0),
            upload_speed=int(data.get("uploadSpeed") or 0),
            files=tuple(SharedFile.from_json(item) for item in data.get("files") or ()),
        )


@dataclass(frozen=True)
class Transfer:
    """One download as slskd reports it; ``state`` is comma-joined flags."""

    id: str
    username: str
    filename: str
    #: Bytes.
    size: int
    state: str
    bytes_transferred: int
    #: 0 to 100.
    percent_complete: float
    #: slskd's reason when the transfer failed, else ``None``.
    exception: str | None
    #: ISO time slskd created the transfer (``""`` if it sent none).
    requested_at: str = ""
    #: slskd removed it from its lists (a retention policy, ``DELETE ...?remove=true``, or a
    #: newer transfer of the same file); it still answers it by id.
    removed: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transfer:
        """Every field but ``id`` may be missing: slskd leaves null fields out."""
        return cls(
            id=str(data["id"]),
            username=str(data.get("username") or ""),
            filename=str(data.get("filename") or ""),
            size=int(data.get("size") or 0),
            state=str(data.get("state") or ""),
            bytes_transferred=int(data.get("bytesTransferred") or 0),
            percent_complete=float(data.get("percentComplete") or 0.0),
            exception=data.get("exception") or None,
            requested_at=str(data.get("requestedAt") or ""),
            removed=bool(data.get("removed", False)),
        )

    @property
    def done(self) -> bool:
        """The transfer ended, one way or the other."""
        return "Completed" in _flags(self.state)

    @property
    def succeeded(self) -> bool:
        """``"Completed, Succeeded"``: the file is on disk."""
        flags = _flags(self.state)
        return "Completed" in flags and "Succeeded" in flags

    @property
    def failed(self) -> bool:
        """Completed without success: cancelled, timed out, errored, rejected or aborted."""
        return self.done and not self.succeeded

    @property
    def shut_down(self) -> bool:
        """Ended by slskd shutting down (slskd enqueues it again once it is back)."""
        return self.failed and (self.exception or "").strip() == SHUT_DOWN

    @property
    def queued_remotely(self) -> bool:
        """Waiting in the peer's upload queue."""
        return not self.done and {"Queued", "Remotely"} <= _flags(self.state)

    @property
    def waiting(self) -> bool:
        """Requested or queued (locally or at the peer), not yet started."""
        return not self.done and bool(_flags(self.state) & _WAITING_FLAGS)

    @property
    def active(self) -> bool:
        """Initializing or in progress."""
        return not self.done and bool(_flags(self.state) & _ACTIVE_FLAGS)


@dataclass(frozen=True)
class EnqueueFailure:
    """One entry of the ``failed`` list slskd answers an enqueue with."""

    #: The file it is about, when slskd said so (not on 0.26, whose entries read ``{}``).
    filename: str | None
    #: slskd's reason, when it gave one.
    message: str | None


def parse_failed(items: Any, *, requested: str) -> list[EnqueueFailure]:
    """The ``failed`` list of an enqueue answer in whichever shape this slskd writes it.

    slskd 0.24-0.25 list plain strings (the file names); 0.26 lists objects that serialize as
    ``{}`` (the name and reason are lost on the way); a later version may fill them in as
    ``{"filename", "message"}``. A string that is not the ``requested`` file name is kept as a
    reason. Entries of any other kind are kept as their text, never a crash.
    """
    if not isinstance(items, list):
        return []
    failures = []
    for item in items:
        if isinstance(item, str):
            if item == requested:
                failures.append(EnqueueFailure(filename=item, message=None))
            else:
                failures.append(EnqueueFailure(filename=None, message=item or None))
        elif isinstance(item, dict):
            filename = item.get("filename") or item.get("Filename")
            message = item.get("message") or item.get("Message")
            failures.append(
                EnqueueFailure(
                    filename=None if filename is None else str(filename),
                    message=None if message is None else str(message),
                )
            )
        elif item is not None:
            failures.append(EnqueueFailure(filename=None, message=str(item)))
    return failures


def peer_failure_reason(exc: UpstreamError) -> str | None:
    """slskd's message when ``exc``, from an enqueue request, is a peer's failure; else ``None``.

    This is where a peer's failure is told apart from slskd's own. slskd's enqueue endpoint
    (``TransfersController.EnqueueAsync``) turns every exception into a 500 with the
    exception's message, whether the remote user is offline ("User x appears to be offline"),
    unreachable ("Failed to connect to user x: Failed to establish a direct or indirect message
    connection ...") or too slow ("The wait timed out after 5000 milliseconds"), or slskd itself
    is broken ("The server connection must be connected and logged in ...", a database error).
    Only a 500 whose message holds one of :data:`PEER_FAILURE_PHRASES` is the peer's failure;
    every other 500, and connection errors, timeouts, 502/503/504 and 429, are slskd's. The
    batches endpoint of 0.26 answers a peer that is offline 404 with the message instead.
    """
    if exc.status not in (404, 500):
        return None
    text = str(exc)
    if not any(phrase in text.casefold() for phrase in PEER_FAILURE_PHRASES):
        return None
    _, _, body = text.partition(f" answered {exc.status}: ")
    return _unquoted(body or text)


@dataclass(frozen=True)
class Candidate:
    """One file worth trying to download for a track, as :func:`choose_best` ranks them."""

    username: str
    filename: str
    size: int
    extension: str
    bit_rate: int | None
    lossless: bool


def choose_best(responses: Iterable[PeerResponse], *, max_candidates: int) -> list[Candidate]:
    """The ``max_candidates`` best audio files among ``responses``, best first.

    Only files whose extension is in :data:`AUDIO_EXTENSIONS` are candidates (covers, cue
    sheets and logs are not). They are ordered by, in turn:

    1. lossless first: the extension is in :data:`LOSSLESS_EXTENSIONS` or the peer sent a bit
       depth (an ALAC ``.m4a``);
    2. higher quality: ``bit_depth * sample_rate`` for lossless files (unknown counts as 0),
       the bit rate for lossy ones (unknown counts as 0);
    3. peers with a free upload slot first;
    4. shorter queue at the peer;
    5. higher upload speed of the peer;
    6. then user name, file name, size, extension and bit rate, so the order is total: the same
       answers give the same ranking whatever order the peers answered in.

    A file offered twice by the same user (in two responses) is listed once, at its best rank.
    """
    ranked: list[Candidate] = []
    seen: set[tuple[str, str]] = set()
    for _, candidate in sorted(_candidates(responses), key=lambda pair: pair[0]):
        if len(ranked) == max_candidates:
            break
        if (candidate.username, candidate.filename) not in seen:
            seen.add((candidate.username, candidate.filename))
            ranked.append(candidate)
    return ranked


def _candidates(responses: Iterable[PeerResponse]) -> Iterator[tuple[tuple[Any, ...], Candidate]]:
    for response in responses:
        for file in response.files:
            if file.extension not in AUDIO_EXTENSIONS:
                continue
            lossless = file.extension in LOSSLESS_EXTENSIONS or file.bit_depth is not None
            if lossless:
                quality = (file.bit_depth or 0) * (file.sample_rate or 0)
            else:
                quality = file.bit_rate or 0
            key = (
                not lossless,
                -quality,
                not response.has_free_upload_slot,
                response.queue_length,
                -response.upload_speed,
                response.username,
                file.filename,
                file.size,
                file.extension,
                file.bit_rate is None,
                file.bit_rate or 0,
            )
            candidate = Candidate(
                username=response.username,
                filename=file.filename,
                size=file.size,
                extension=file.extension,
                bit_rate=file.bit_rate,
                lossless=lossless,
            )
            yield key, candidate


@dataclass(frozen=True)
class SearchResults:
    """A finished search (:meth:`SlskdClient.search`) and every peer's answer to it."""

    search: Search
    responses: tuple[PeerResponse, ...]

    @property
    def files(self) -> list[tuple[str, SharedFile]]:
        """Every file offered, with the user offering it, in the order slskd listed them."""
        return [(peer.username, file) for peer in self.responses for file in peer.files]


class SlskdApi:
    """What both slskd clients know, without I/O: each operation as a :data:`Flow`."""

    def __init__(self, settings: SlskdSettings) -> None:
        self.settings = settings
        #: Whether this slskd has the batches enqueue endpoint (``None``: not known yet).
        self._batches: bool | None = None

    # -- searches --------------------------------------------------------------------------

    def start_search(self, query: str, search_id: str | None) -> Flow[Search]:
        body = {
            "id": search_id or str(uuid.uuid4()),
            "searchText": query,
            "searchTimeout": int(self.settings.search_timeout * 1000),
            "responseLimit": RESPONSE_LIMIT,
            "fileLimit": FILE_LIMIT,
            "filterResponses": True,
        }
        response = yield from self._back_pressured(
            "POST", "/api/v0/searches", "a search is starting", body
        )
        return json_body(SERVICE, response, Search.from_json)

    def get_search(self, search_id: str) -> Flow[Search]:
        response = yield Request(
            "GET", f"/api/v0/searches/{_segment(search_id)}", params={"includeResponses": False}
        )
        return json_body(SERVICE, response, Search.from_json)

    def get_responses(self, search_id: str) -> Flow[list[PeerResponse]]:
        response = yield Request("GET", f"/api/v0/searches/{_segment(search_id)}/responses")
        return json_body(SERVICE, response, _peer_responses)

    def search(self, query: str) -> Flow[SearchResults]:
        """Start a search, look at it every ``search_poll_interval`` seconds until slskd has
        recorded its end (:attr:`Search.ended`), then read its responses.

        A search slskd has not ended :data:`SEARCH_END_GRACE` seconds after its own
        ``search_timeout`` is slskd misbehaving: :class:`ServiceUnavailableError`.
        """
        search = yield from self.start_search(query, None)
        waited = 0.0
        limit = self.settings.search_timeout + SEARCH_END_GRACE
        while not search.ended:
            if waited >= limit:
                raise ServiceUnavailableError(
                    SERVICE, f"the search {search.id} did not end within {limit:.1f} seconds"
                )
            yield Pause(self.settings.search_poll_interval)
            waited += self.settings.search_poll_interval
            search = yield from self.get_search(search.id)
        responses = yield from self.get_responses(search.id)
        return SearchResults(search, tuple(responses))

    # -- downloads -------------------------------------------------------------------------

    def enqueue_download(self, username: str, filename: str, size: int) -> Flow[Transfer]:
        """Enqueue one file through the batches endpoint of slskd 0.26 and later, or the
        per-user endpoint of older versions: which one this slskd has is learnt on the first
        call and remembered (a 400, 404 or 405 to a batch followed by a success of the older
        endpoint)."""
        files = [{"filename": filename, "size": size}]
        if self._batches is False:
            return (yield from self._enqueue_per_user(username, filename, files))
        try:
            response = yield from self._enqueue(
                username, BATCHES_PATH, {"username": username, "files": files}
            )
        except PeerUnavailableError:
            raise
        except (UpstreamRequestError, NotFoundError) as exc:
            if exc.status not in (400, 404, 405):
                raise
            # no batches here (0.24-0.25 take it for a user named "batches"), or a request
            # slskd refuses either way: the older endpoint tells which
            transfer = yield from self._enqueue_per_user(username, filename, files)
            self._batches = False
            return transfer
        self._batches = True
        return (yield from self._batch_transfer(username, filename, response))

    def _enqueue_per_user(
        self, username: str, filename: str, files: list[dict[str, Any]]
    ) -> Flow[Transfer]:
        """Enqueue through ``POST downloads/{username}`` (obsolete in 0.26, the only one
        before): its answer is bare (before 0.24) or lists ``enqueued`` and ``failed``."""
        path = f"/api/v0/transfers/downloads/{_segment(username)}"
        response = yield from self._enqueue(username, path, files)
        if not response.content:  # the bare 201 of slskd before 0.24
            reason = "slskd answered with no transfer"
            return (yield from self._existing_download(username, filename, reason))
        result = json_body(SERVICE, response, _json_object)
        for item in result.get("enqueued") or ():
            if isinstance(item, dict) and item.get("filename") == filename and item.get("id"):
                return Transfer.from_json({"username": username, **item})
        failures = [
            failure
            for failure in parse_failed(result.get("failed"), requested=filename)
            if failure.filename in (None, filename)
        ]
        return (yield from self._not_enqueued(username, filename, failures))

    def _enqueue(self, username: str, path: str, body: Any) -> Flow[httpx.Response]:
        """POST an enqueue request; a peer's failure raises :class:`PeerUnavailableError`."""
        try:
            return (
                yield from self._back_pressured(
                    "POST",
                    path,
                    "other downloads are being enqueued",
                    body,
                    timeout=max(self.settings.timeout, ENQUEUE_TIMEOUT),
                )
            )
        except (ServiceUnavailableError, NotFoundError) as exc:
            reason = peer_failure_reason(exc)
            if reason is None:
                raise
            raise PeerUnavailableError(SERVICE, username, reason, status=exc.status) from exc

    def _batch_transfer(
        self, username: str, filename: str, response: httpx.Response
    ) -> Flow[Transfer]:
        """The transfer of ``filename`` in a batch answer (201, 207 or 200), or the one slskd
        already has when it listed the file among the ``failures``."""
        result = json_body(SERVICE, response, _json_object)
        batch = result.get("batch") if isinstance(result.get("batch"), dict) else {}
        for item in batch.get("transfers") or ():
            if isinstance(item, dict) and item.get("filename") == filename and item.get("id"):
                return Transfer.from_json({"username": username, **item})
        failures = [
            failure
            for failure in parse_failed(result.get("failures"), requested=filename)
            if failure.filename in (None, filename)
        ]
        return (yield from self._not_enqueued(username, filename, failures))

    def _not_enqueued(
        self, username: str, filename: str, failures: list[EnqueueFailure]
    ) -> Flow[Transfer]:
        """slskd enqueued nothing new (the file is already being downloaded, or adding it
        failed): the transfer of that file it has, with slskd's reasons when it has none."""
        reasons = [failure.message for failure in failures if failure.message]
        if failures:
            reason = "; ".join(reasons) or "slskd listed the file as failed, without a reason"
        else:
            reason = "slskd answered with no transfer"
        return (yield from self._existing_download(username, filename, reason))

    def get_transfer(self, username: str, transfer_id: str) -> Flow[Transfer]:
        response = yield Request(
            "GET", f"/api/v0/transfers/downloads/{_segment(username)}/{_segment(transfer_id)}"
        )
        return json_body(SERVICE, response, Transfer.from_json)

    def cancel_download(self, username: str, transfer_id: str) -> Flow[None]:
        yield Request(
            "DELETE",
            f"/api/v0/transfers/downloads/{_segment(username)}/{_segment(transfer_id)}",
            params={"remove": False},
        )

    # -- the session -----------------------------------------------------------------------

    def check_session(self) -> Flow[str]:
        """Whether slskd takes our API key (``GET /api/v0/session``: 200 or 401) and is logged
        in to Soulseek (``GET /api/v0/server``); the Soulseek server's address."""
        yield Request("GET", "/api/v0/session")
        response = yield Request("GET", "/api/v0/server")
        server = json_body(SERVICE, response, _json_object)
        if not server.get("isLoggedIn"):
            state = server.get("state") or "unknown"
            raise ServiceOutage(
                SERVICE,
                f"GET /api/v0/server: slskd is not logged in to Soulseek (state: {state})",
                outage=LOGGED_OUT,
                opens_at_once=True,
            )
        return str(server.get("address") or "")

    # -- helpers ---------------------------------------------------------------------------

    def _back_pressured(
        self, method: str, path: str, reason: str, body: Any, timeout: float | None = None
    ) -> Flow[httpx.Response]:
        """Send a request whose 429 means "busy, come back soon": raise :class:`RetryLater`."""
        try:
            return (yield Request(method, path, json=body, timeout=timeout))
        except ServiceUnavailableError as exc:
            if exc.status != 429:
                raise
            retry_after = exc.retry_after or DEFAULT_RETRY_AFTER
            raise RetryLater(SERVICE, retry_after, f"slskd is busy: {reason}") from exc

    def _existing_download(self, username: str, filename: str, reason: str) -> Flow[Transfer]:
        """The transfer of ``filename`` from ``username`` slskd already has, to follow instead of
        a new one: an unfinished one first, else the latest. Raises
        :class:`PeerUnavailableError` with ``reason`` when slskd lists none."""
        try:
            response = yield Request("GET", f"/api/v0/transfers/downloads/{_segment(username)}")
        except NotFoundError:  # slskd has no download from this user at all
            group: dict[str, Any] = {}
        else:
            group = json_body(SERVICE, response, _json_object)
        matches = [
            item
            for directory in group.get("directories") or ()
            if isinstance(directory, dict)
            for item in directory.get("files") or ()
            if isinstance(item, dict)
            and item.get("filename") == filename
            and item.get("id")
            and not item.get("removed")
        ]
        if not matches:
            raise PeerUnavailableError(
                SERVICE, username, f"{reason}; slskd lists no transfer of {filename!r}"
            )
        transfers = [Transfer.from_json({"username": username, **item}) for item in matches]
        return max(transfers, key=lambda t: (not t.done, t.requested_at))


def _http_options(settings: SlskdSettings) -> dict[str, Any]:
    """How both clients talk to slskd: its timeout, the API key header, its error bodies (a
    401 means :data:`CREDENTIALS` are wrong; "not logged in" is an outage of slskd)."""
    return {
        "timeout": settings.timeout,
        "headers": {"X-API-Key": settings.api_key.get_secret_value()},
        "error_message": _error_message,
        "credentials": CREDENTIALS,
        "outage": _outage,
    }


class SlskdClient:
    """Synchronous client of one slskd daemon, authenticated with its API key.

    Every answer is classified by :class:`UpstreamHttp`; the API key travels only in the
    ``X-API-Key`` header, never in an error message.
    """

    def __init__(self, settings: SlskdSettings) -> None:
        self.settings = settings
        self._api = SlskdApi(settings)
        self._http = UpstreamHttp(SERVICE, settings.url, **_http_options(settings))

    def __repr__(self) -> str:
        return f"SlskdClient(url={self.settings.url!r})"

    # -- searches --------------------------------------------------------------------------

    def search(self, query: str) -> SearchResults:
        """Search the Soulseek network for ``query`` and return the finished search's files.

        Parks the calling thread until slskd ends the search (up to ``search_timeout``); a job
        that must not wait uses :meth:`start_search`, :meth:`get_search` and
        :meth:`get_responses`. Raises :class:`RetryLater` while slskd is starting another
        search.
        """
        return drive(self._api.search(query), self._http.send)

    def start_search(self, query: str, *, search_id: str | None = None) -> Search:
        """Start searching the Soulseek network for ``query``; raises :class:`RetryLater`
        while slskd is starting another search."""
        return drive(self._api.start_search(query, search_id), self._http.send)

    def get_search(self, search_id: str) -> Search:
        """The search's state and counts (its responses are fetched by :meth:`get_responses`)."""
        return drive(self._api.get_search(search_id), self._http.send)

    def get_responses(self, search_id: str) -> list[PeerResponse]:
        """Every peer's answer to the search so far."""
        return drive(self._api.get_responses(search_id), self._http.send)

    # -- downloads -------------------------------------------------------------------------

    def enqueue_download(self, username: str, filename: str, size: int) -> Transfer:
        """Ask slskd to download ``filename`` from ``username``; the transfer to follow.

        When slskd reports the file as not enqueued because it is already being downloaded
        ("Skipped: Already in progress"; 0.24-0.26 do not always say why), the existing
        transfer is returned instead of a duplicate; so is the new one after the bare 201 of
        older versions. Raises :class:`PeerUnavailableError` when the peer is offline,
        unreachable or refuses, or slskd did not enqueue the file and has no transfer of it
        (never a failure of slskd's breaker), and :class:`RetryLater` when slskd is busy with
        other enqueue requests.
        """
        return drive(self._api.enqueue_download(username, filename, size), self._http.send)

    def get_transfer(self, username: str, transfer_id: str) -> Transfer:
        """The download's current state and progress."""
        return drive(self._api.get_transfer(username, transfer_id), self._http.send)

    def cancel_download(self, username: str, transfer_id: str) -> None:
        """Cancel the download; slskd keeps it in its list as ``"Completed, Cancelled"``."""
        return drive(self._api.cancel_download(username, transfer_id), self._http.send)

    def check_session(self) -> str:
        """The address of the Soulseek server slskd is logged in to; raises
        :class:`~soulspot_jobs.errors.UnauthorizedError` when slskd refuses the API key and
        :class:`~soulspot_jobs.errors.ServiceOutage` when it is not logged in to Soulseek."""
        return drive(self._api.check_session(), self._http.send)

    def close(self) -> None:
        self._http.close()


class AsyncSlskdClient:
    """The async twin of :class:`SlskdClient` on ``httpx.AsyncClient``: the same requests,
    answers and errors (one :class:`SlskdApi`); :meth:`search` awaits between its looks at the
    search. Close it with ``await client.aclose()`` or ``async with``.
    """

    def __init__(self, settings: SlskdSettings) -> None:
        self.settings = settings
        self._api = SlskdApi(settings)
        self._http = AsyncUpstreamHttp(SERVICE, settings.url, **_http_options(settings))

    def __repr__(self) -> str:
        return f"AsyncSlskdClient(url={self.settings.url!r})"

    async def __aenter__(self) -> AsyncSlskdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def search(self, query: str) -> SearchResults:
        """See :meth:`SlskdClient.search` (here the waits are ``asyncio.sleep``)."""
        return await drive_async(self._api.search(query), self._http.send)

    async def start_search(self, query: str, *, search_id: str | None = None) -> Search:
        """See :meth:`SlskdClient.start_search`."""
        return await drive_async(self._api.start_search(query, search_id), self._http.send)

    async def get_search(self, search_id: str) -> Search:
        """See :meth:`SlskdClient.get_search`."""
        return await drive_async(self._api.get_search(search_id), self._http.send)

    async def get_responses(self, search_id: str) -> list[PeerResponse]:
        """See :meth:`SlskdClient.get_responses`."""
        return await drive_async(self._api.get_responses(search_id), self._http.send)

    async def enqueue_download(self, username: str, filename: str, size: int) -> Transfer:
        """See :meth:`SlskdClient.enqueue_download`."""
        flow = self._api.enqueue_download(username, filename, size)
        return await drive_async(flow, self._http.send)

    async def get_transfer(self, username: str, transfer_id: str) -> Transfer:
        """See :meth:`SlskdClient.get_transfer`."""
        return await drive_async(self._api.get_transfer(username, transfer_id), self._http.send)

    async def cancel_download(self, username: str, transfer_id: str) -> None:
        """See :meth:`SlskdClient.cancel_download`."""
        flow = self._api.cancel_download(username, transfer_id)
        return await drive_async(flow, self._http.send)

    async def check_session(self) -> str:
        """See :meth:`SlskdClient.check_session`."""
        return await drive_async(self._api.check_session(), self._http.send)

    async def aclose(self) -> None:
        await self._http.aclose()


class CircuitBreakerSlskdClient(GuardedClient):
    """:class:`SlskdClient` or :class:`AsyncSlskdClient` with every call behind the
    ``slskd-api`` circuit breaker."""

    service = SERVICE


def _segment(value: str) -> str:
    """``value`` quoted as one URL path segment (user names and ids may hold ``/`` or spaces)."""
    return quote(value, safe="")


def _extension(declared: Any, filename: str) -> str:
    extension = str(declared or "").strip().lstrip(".").lower()
    if extension:
        return extension
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _instant(text: str | None) -> datetime | None:
    """An ISO time slskd wrote (``2026-12-05T03:02:17.1234567Z``, 7 fraction digits), or
    ``None`` when absent or unreadable."""
    if not text:
        return None
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", text)
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    fraction = (fraction or ".0")[:7]
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        return datetime.fromisoformat(f"{whole}{fraction}{zone}")
    except ValueError:
        return None


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _unquoted(text: str) -> str:
    """slskd writes an error message as a JSON string (quoted); read it as plain text."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text.strip('"')
        return value if isinstance(value, str) else text
    return text.strip('"')


def _json_object(data: Any) -> dict[str, Any]:
    """``data`` when it is a JSON object; any other shape is slskd misbehaving."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _peer_responses(data: Any) -> list[PeerResponse]:
    if not isinstance(data, list):
        raise TypeError(f"expected a JSON list of responses, got {type(data).__name__}")
    return [PeerResponse.from_json(item) for item in data]


def _outage(response: httpx.Response, said: str) -> str | None:
    """slskd's answer means it can serve nothing now: it is not logged in to Soulseek."""
    return LOGGED_OUT if LOGGED_OUT_PHRASE in said.casefold() else None


def _error_message(response: httpx.Response) -> str | None:
    """slskd's own words in an error answer: its controllers answer with the exception's
    message, which ASP.NET writes as a JSON string; ``None`` for any other body."""
    try:
        message = response.json()
    except ValueError:
        return None
    return message.strip() or None if isinstance(message, str) else None
