"""A fake slskd daemon: searches over the shared catalog and downloads that progress over time.

It speaks the REST API v0 endpoints :class:`~soulspot_jobs.clients.slskd.SlskdClient` and the
``slskd-api`` package use, with slskd's camelCase JSON (null fields left out), ISO timestamps,
GUID ids and comma-joined states, and requires the ``X-API-Key`` header (401 with an empty body
otherwise, as slskd's authentication answers). Routes match with or without a trailing slash,
as ASP.NET's do. This module is the server and its controls; the peers, searches, transfers and
batches it serves, and their JSON, are in :mod:`soulspot_jobs.fakes.slskd_network`. The
behaviours below are slskd 0.26.0's unless a version is named; each names the slskd source
file it follows.

Errors
    An error answer with a message (400, 404 from the batches endpoint, 409, 429, 500) carries
    it as a JSON string with ``Content-Type: application/json``, as ASP.NET writes a
    controller's ``ObjectResult`` of a string. A bare ``BadRequest()`` or ``NotFound()`` has an
    empty body: slskd turns ASP.NET's problem details off (``SuppressMapClientErrors`` in
    ``Program.cs``), and ``TransfersController`` and ``SearchesController`` are not
    ``[ApiController]`` s anyway. A body that does not bind answers 400 with ASP.NET's
    model-binding message (``ModelState.GetReadableString()``), e.g. ``The JSON value could
    not be converted to ...`` (the byte position is not computed: always 1).

Searches (``SearchesController.cs``, ``SearchService.cs``)
    A search whose words all occur in a catalog track's artist, album and title finds that
    track: it stays ``"InProgress"`` for ``search_duration`` seconds (its counts growing as
    responses arrive), then ends ``"Completed, ResponseLimitReached"`` with one response per
    peer of :data:`PEERS` (a 16-bit FLAC, a 320 kbit/s MP3 whose extension field is empty, a
    128 kbit/s MP3, a busy, slow peer with a locked FLAC). Any other search ends ``"Completed,
    TimedOut"`` with none, once its ``searchTimeout`` (milliseconds without a response, after
    which Soulseek.NET ends a search) has passed, or after ``search_duration`` when it gives
    none or a shorter one. As in slskd, the responses are stored (and ``endedAt`` set) only when
    the search ends; until then ``GET .../responses`` answers ``[]``. ``GET /api/v0/searches``
    lists them. A blank ``searchText`` answers 400 ``The field SearchText can not be null, ...``;
    an ``id`` that is no GUID, 400. A search id already used answers 500 with the database's
    message (slskd inserts the record first, and the insert fails), not 409. Only one search
    start at a time: an overlapping start (slow when ``search_start_delay`` is set) answers 429
    ``Only one concurrent operation is permitted``.

Enqueueing, per user (``TransfersController.EnqueueAsync``, obsolete in 0.26)
    ``POST /api/v0/transfers/downloads/{username}`` with a list of ``{"filename", "size"}``. An
    empty list or ``null`` answers 400 ``At least one file is required``; a body that is not a
    list, 400 with the model-binding message. At most two enqueue requests at a time, this and
    the batches endpoint together (``enqueue_delay``), 429 beyond. A peer that is offline (or
    unknown), unreachable or too slow answers 500 with the Soulseek library's message. A file
    already being downloaded from that peer is not enqueued twice: it is listed in ``failed``
    in the shape of ``version``: file names on 0.24-0.25, ``{}`` on 0.26 (slskd serializes its
    (file name, message) tuples as empty objects); before 0.24 (or with ``legacy_enqueue``) the
    answer is a bare 201. Every enqueue call, this and the batches one, is recorded in
    :attr:`FakeSlskd.enqueue_requests`.

Enqueueing a batch (``TransfersController.EnqueueBatchAsync``, ``EnqueueDownloadBatch*.cs``,
``Batch.cs``; 0.26 only)
    ``POST /api/v0/transfers/downloads/batches`` with ``{"id"?, "searchId"?, "username",
    "files": [{"filename", "size"}], "options"?: {"destination"?}}`` answers 201 (all
    enqueued), 207 (some listed in ``failures``) or 200 (none enqueued) with ``{"batch":
    {"searchId"?, "id", "username", "direction", "createdAt", "transfers", "options"},
    "failures": [{"filename", "message"}]}``, the messages in full (``Skipped: Already in
    progress``, ``Error: ...``); the transfers carry ``batchId``. ``GET
    .../downloads/batches/{id}`` answers the batch with its transfers as they are now, 400
    when the id is no GUID, 404 when there is none. Refusals: a body that does not bind, no
    ``username`` or no ``files``, or an ``id``/``searchId`` that is no GUID (``The Id field
    must be a valid GUID/UUID``: slskd's ``[Guid]`` validation answers before the controller's
    own check) answer 400 with the model-binding message; a file named twice, 400 ``Two or more
    files in the request are repeated``; the shared limit, 429; a peer offline or unknown, 404
    ``User x appears to be offline``; a peer too slow, 500; a peer unreachable, 500 after the
    batch was created (so the same batch id again answers 409); a batch id already used, 409
    ``A batch with ID ... already exists``. Before 0.26 (and with ``legacy_enqueue``) the
    route does not exist, and ASP.NET routes the request to ``POST downloads/{username}`` for
    a user named ``batches``: its object body does not bind to a list, so it answers 400 with
    the model-binding message (and ``GET .../batches/{id}`` reads a transfer by that id,
    usually 404).

Downloads (``TransfersController.cs``, ``DownloadService.cs``, ``Transfer.cs``)
    A download moves ``Queued, Locally`` -> ``Requested`` -> ``Queued, Remotely`` ->
    ``Initializing`` -> ``InProgress`` -> ``Completed, Succeeded`` over ``transfer_duration``
    seconds, computed on each read; a file the peer does not share ends ``Completed,
    Rejected``. Every transfer carries ``removed``; ``exception`` and ``endedAt`` once it ended
    (frozen there), ``remainingTime`` whenever its speed is not 0, ``attempts`` 0 until it
    leaves the local queue. ``GET .../downloads/{username}/{id}`` and ``.../position`` find the
    transfer by id alone (the user name in the path is not read) and answer 400 (empty) when
    the id is no GUID. ``.../position`` answers its place in the peer's queue, or 500 with the
    library's message when it is no longer active or the peer is gone.
    ``DELETE .../downloads/{username}/{id}`` cancels the transfer if it has not ended and
    answers 204, even when there is no such transfer; with ``?remove=true`` it also marks an
    ended transfer ``"removed": true`` (soft delete): a transfer still running is only
    cancelled, since slskd removes completed records only and the cancellation lands after the
    removal, so it takes a second ``DELETE ...?remove=true``. ``DELETE
    .../downloads/all/completed`` marks every ended download removed. A removed transfer
    still answers ``GET`` by id; ``GET .../downloads`` leaves removed ones out unless
    ``?includeRemoved=true``, ``GET .../downloads/{username}`` always (404 when nothing else is
    left). Enqueueing a file again from the same peer once its transfer ended marks the older
    records of that file removed (they are superseded). With ``hard_delete`` (older servers
    and other setups), ``remove=true`` deletes the transfer, so ``GET`` by id answers 404, and
    a ``DELETE`` of an unknown id answers 404.

Server and session (``ServerController.cs``, ``Core/State.cs``, ``SessionController.cs``)
    ``GET /api/v0/server`` answers slskd's server state: ``{"address": "vps.slsknet.org",
    "ipEndPoint", "state": "Connected, LoggedIn", "isConnected", "isConnecting",
    "isLoggedIn", "isLoggingIn", "isTransitioning"}`` (no user name: slskd keeps it elsewhere).
    ``GET /api/v0/session`` answers 200 with an empty body when the API key is good.

Logged out of Soulseek (``logged_out``)
    ``GET /api/v0/server`` reads ``"state": "Connected"`` (or ``"Disconnected"``, without
    address), ``"isLoggedIn": false``. A search start answers 409 ``The server connection must
    be connected and logged in to perform a search (currently: Connected)``, and its search is
    kept as ``Completed, Errored`` (so its id cannot be used again); an enqueue, either
    endpoint, answers 500 ``... to fetch user endpoint (currently: Connected)`` (the library's
    words, Soulseek.NET 10.0.2); a queue position, 500 ``... Connected and LoggedIn to check
    download queue position ...``. Transfers already running go on.

A restart (``restart``; ``Application.cs``)
    As slskd does when it starts: every transfer not ended becomes ``Completed, Errored`` with
    ``exception`` ``Application shut down`` and ``endedAt`` now, removed ones too; every search
    not ended becomes ``Completed, TimedOut`` with no responses and counts of 0. During
    ``downtime`` seconds the server refuses connections. Once it is back and logged in (at
    once with a downtime of 0; after ``logged_out(False)`` when logged out), the transfers it
    shut down that are not removed are enqueued again from the same peers (new ids, ``Queued,
    Locally``, without batch), which marks the old records removed; a peer that cannot be
    reached is skipped, as slskd logs and skips it. :attr:`FakeSlskd.restarts` counts them.

Controls, besides the base fault controls, from Python or as ``POST /_faults/<name>``:
``busy_searches {"count"}`` and ``busy_enqueues {"count"}`` (the next starts answer 429),
``fail_downloads {"count", "state"?, "exception"?}`` (the next enqueued transfers end failed),
``fail_downloads_from {"username", "state"?, "exception"?}`` (every transfer from that peer
fails), ``peers_offline {"usernames", "reason"?}`` (enqueues from them fail; reason
``offline``, ``unreachable`` or ``timeout``), ``fail_enqueues {"count"}`` (the next files are
listed as failed with ``Error: ...``, without a transfer), ``early_complete {"seconds"}``
(searches read ``Completed`` that long before their responses and ``endedAt`` are stored,
slskd's known race), ``logged_out {"value"?: true, "state"?: "Connected" | "Disconnected"}``
(``logged_out(value=True, state="Connected")``), ``restart {"downtime"?: 0}``
(``restart(downtime=0.0)``), ``hard_delete {"value"?: true}`` (the ``hard_delete``
attribute), ``version {"version"}``, ``search_duration {"seconds"}``, ``transfer_duration
{"seconds"}``; ``clear`` resets them with the base faults (logging slskd in again), all but
``version``, ``hard_delete`` and the durations, which are settings.

For tests: :attr:`FakeSlskd.enqueue_requests` (every enqueue call, with the endpoint and the
answer's status), :attr:`FakeSlskd.search_requests`, :meth:`FakeSlskd.completed_downloads`
(every transfer that has read ``Completed, Succeeded`` by now, removed or deleted ones too: a
file listed twice was downloaded twice) and :attr:`FakeSlskd.restarts`.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import unquote

from soulspot_jobs.fakes.catalog import CATALOG, CatalogTrack
from soulspot_jobs.fakes.index import KeyIndex
from soulspot_jobs.fakes.server import FAULTS_PATH, FakeServer, Request, Response
from soulspot_jobs.fakes.slskd_network import (
    PEERS,
    REJECTED_AT,
    BatchRecord,
    Peer,
    SearchRecord,
    TransferRecord,
    batch_json,
    extra_json,
    file_json,
    response_json,
    search_ended,
    search_json,
    server_json,
    stored_responses,
    transfer_done,
    transfer_json,
    transfer_state,
    user_json,
)

__all__ = ["PEERS", "EnqueueRequest", "FakeSlskd", "Peer"]

#: slskd's answer to a search start overlapping another one, and to a third enqueue at once.
CONCURRENT_OPERATION_MESSAGE = (
    "Only one concurrent operation is permitted. Wait until the previous request completes"
)
#: Enqueue requests slskd handles at once, both endpoints together; more answer 429.
MAX_CONCURRENT_ENQUEUES = 2
#: Default reason of a download failed by :meth:`FakeSlskd.fail_downloads`.
DEFAULT_FAILURE = "Transfer failed: the remote peer closed the connection"
#: slskd's failure message for a file it is already downloading from that peer.
ALREADY_IN_PROGRESS = "Skipped: Already in progress"
#: slskd's failure message for a file it failed to add (:meth:`FakeSlskd.fail_enqueues`).
ENQUEUE_ERROR = "Error: SQLite Error 5: 'database is locked'."
#: The state and exception of a download of a file the peer does not share.
NOT_SHARED = ("Completed, Rejected", "Transfer rejected: File not shared.")
#: What slskd answers an enqueue with when the peer fails, by reason: the Soulseek library's
#: exception messages (``{user}`` is the peer's name).
PEER_FAILURES = {
    "offline": "User {user} appears to be offline",
    "unreachable": (
        "Failed to connect to user {user}: Failed to establish a direct or indirect message"
        " connection to {user} (203.0.113.7:2234)"
    ),
    "timeout": "The wait timed out after 5000 milliseconds",
}
#: slskd versions whose answers the fake can speak (see the module docstring).
VERSIONS = ("0.23", "0.24", "0.25", "0.26")
#: The first version with ``POST /api/v0/transfers/downloads/batches``.
BATCHES_SINCE = "0.26"
#: States of the server connection :meth:`FakeSlskd.logged_out` can leave slskd in.
LOGGED_OUT_STATES = ("Connected", "Disconnected")
#: The server connection's state while logged in.
LOGGED_IN = "Connected, LoggedIn"
#: The Soulseek library's messages while not logged in, by operation (``{state}``: its state).
LOGGED_OUT_MESSAGES = {
    "search": (
        "The server connection must be connected and logged in to perform a search"
        " (currently: {state})"
    ),
    "enqueue": (
        "The server connection must be connected and logged in to fetch user endpoint"
        " (currently: {state})"
    ),
    "position": (
        "The server connection must be Connected and LoggedIn to check download queue position"
        " (currently: {state})"
    ),
}
#: slskd's messages for refused requests.
SEARCH_TEXT_REQUIRED = "The field SearchText can not be null, empty, or consist of only whitespace"
NO_FILES = "At least one file is required"
NULL_FILES = "One or more files in the request are null"
REPEATED_FILES = "Two or more files in the request are repeated"
DUPLICATE_BATCH = "A batch with ID {id} already exists"
#: Entity Framework's message when slskd inserts a search whose id is taken.
DUPLICATE_SEARCH = (
    "An error occurred while saving the entity changes. See the inner exception for details."
)
#: ASP.NET's model-binding messages.
EMPTY_BODY = "A non-empty request body is required."
NOT_CONVERTIBLE = (
    "The JSON value could not be converted to {type}. Path: {path} | LineNumber: 0 |"
    " BytePositionInLine: 1."
)
#: .NET's message when slskd reads a field of a ``null`` request.
NULL_REFERENCE = "Object reference not set to an instance of an object."
#: .NET type names in the model-binding messages.
PER_USER_BODY = "System.Collections.Generic.IEnumerable`1[slskd.Transfers.API.QueueDownloadRequest]"
PER_USER_ITEM = "slskd.Transfers.API.QueueDownloadRequest"
BATCH_BODY = "slskd.Transfers.API.EnqueueDownloadBatchRequest"
BATCH_FILES = (
    "System.Collections.Generic.IReadOnlyCollection`1[slskd.Transfers.API.EnqueueDownloadBatchItem]"
)
BATCH_ITEM = "slskd.Transfers.API.EnqueueDownloadBatchItem"
SEARCH_BODY = "slskd.Search.API.SearchRequest"
#: ``endpoint`` of :class:`EnqueueRequest`.
PER_USER = "per_user"
BATCH = "batch"
#: A GUID as .NET's ``Guid.TryParse`` reads one: 32 digits, plain, hyphenated, in braces or
#: in parentheses.
_HEX = "[0-9a-fA-F]"
_HYPHENATED = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
GUID = re.compile(rf"^(?:{_HEX}{{32}}|{_HYPHENATED}|\{{{_HYPHENATED}\}}|\({_HYPHENATED}\))$")


class EnqueueRequest(NamedTuple):
    """One enqueue call the fake answered."""

    #: The user in the path (``downloads/{username}``) or the body (batches).
    username: str
    #: The file names requested, in order (those it could read).
    files: tuple[str, ...]
    #: :data:`PER_USER` or :data:`BATCH`.
    endpoint: str
    #: The status it answered.
    status: int


class FakeSlskd(FakeServer):
    """slskd on loopback, sharing ``catalog`` through ``peers``; see the module docstring."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        catalog: Sequence[CatalogTrack] = CATALOG,
        peers: Sequence[Peer] = PEERS,
        peers_per_track: int | None = None,
        search_duration: float = 0.3,
        transfer_duration: float = 0.5,
        search_start_delay: float = 0.0,
        enqueue_delay: float = 0.0,
        legacy_enqueue: bool = False,
        hard_delete: bool = False,
        version: str = "0.26",
        port: int = 0,
    ) -> None:
        super().__init__(port=port)
        self.api_key = api_key
        self.catalog = tuple(catalog)
        #: The peers sharing every track: the first ``peers_per_track`` of ``peers``.
        self.peers = tuple(peers)[:peers_per_track]
        #: Seconds a search runs before it completes.
        self.search_duration = search_duration
        #: Seconds a download takes from ``Queued, Locally`` to ``Completed``.
        self.transfer_duration = transfer_duration
        #: Seconds a search start takes (overlapping starts answer 429 meanwhile).
        self.search_start_delay = search_start_delay
        #: Seconds an enqueue request takes (a third one meanwhile answers 429).
        self.enqueue_delay = enqueue_delay
        #: Answer enqueues with an empty 201, as slskd did before it listed enqueued transfers.
        self.legacy_enqueue = legacy_enqueue
        #: ``DELETE ...?remove=true`` deletes the transfer instead of marking it removed.
        self.hard_delete = hard_delete
        #: The slskd version whose answers are spoken (one of :data:`VERSIONS`).
        self.version = _version(version)
        #: Body of every search start accepted, in order.
        self.search_requests: list[dict[str, Any]] = []
        #: Every enqueue call answered (either endpoint, refused ones too), in order.
        self.enqueue_requests: list[EnqueueRequest] = []
        #: How many times :meth:`restart` ran.
        self.restarts = 0
        self._state_lock = threading.Lock()
        self._searches: dict[str, SearchRecord] = {}
        self._transfers: dict[str, TransferRecord] = {}
        self._batches: dict[str, BatchRecord] = {}
        #: Transfers deleted by a hard delete, still counted by :meth:`completed_downloads`.
        self._deleted: list[TransferRecord] = []
        #: (username, file name) -> ids of the transfers of that file from that user, oldest
        #: first: only the last may be unfinished, as a new one is added only once it finished.
        self._history: dict[tuple[str, str], list[str]] = {}
        #: Ids of the transfers the last restart shut down, to enqueue again once logged in.
        self._to_resume: list[str] = []
        #: The server refuses connections after a restart.
        self._down = False
        self._restart_timer: threading.Timer | None = None
        #: Words of each catalog track's artist, album and title, by the track's number (from 1).
        self._track_words = KeyIndex()
        for number, track in enumerate(self.catalog, start=1):
            self._track_words.add(number, _words(f"{track.artist} {track.album} {track.title}"))
        #: Username -> the files that peer shares, by file name, with their sizes.
        self._shared = {peer.username: self._files_of(peer) for peer in self.peers}
        self._tokens = iter(range(1_000_001, 1 << 31))
        self._starting = 0
        self._enqueuing = 0
        self.clear_controls()
        self._routes_for_api()

    # -- controls ----------------------------------------------------------------------------

    def clear_controls(self) -> None:
        """Forget every slskd-specific control (the base faults are cleared by ``faults``)."""
        with self._state_lock:
            self._busy_searches = 0
            self._busy_enqueues = 0
            self._failures: list[tuple[str, str]] = []
            self._failing_peers: dict[str, tuple[str, str]] = {}
            self._offline: dict[str, str] = {}
            self._enqueue_errors = 0
            self.finalize_delay = 0.0
            #: The server connection's state (:data:`LOGGED_IN` unless :meth:`logged_out`).
            self.server_state = LOGGED_IN
        self._resume()

    def clear(self) -> None:
        """Back to healthy: base faults and slskd controls."""
        self.faults.clear()
        self.clear_controls()

    def busy_searches(self, count: int) -> None:
        """Answer the next ``count`` search starts 429, as when another start is in flight."""
        with self._state_lock:
            self._busy_searches = count

    def busy_enqueues(self, count: int) -> None:
        """Answer the next ``count`` enqueue requests 429, as when two others are in flight."""
        with self._state_lock:
            self._busy_enqueues = count

    def fail_downloads(
        self, count: int, state: str = "Completed, Errored", exception: str = DEFAULT_FAILURE
    ) -> None:
        """Make the next ``count`` enqueued transfers end in ``state`` with ``exception``."""
        failure = _failure(state, exception)
        with self._state_lock:
            self._failures = [failure] * count

    def fail_downloads_from(
        self, username: str, state: str = "Completed, Errored", exception: str = DEFAULT_FAILURE
    ) -> None:
        """Make every transfer enqueued from ``username`` from now on end failed."""
        failure = _failure(state, exception)
        with self._state_lock:
            self._failing_peers[username] = failure

    def peers_offline(self, *usernames: str, reason: str = "offline") -> None:
        """Make enqueues from ``usernames`` fail with slskd's message for ``reason``
        (``offline``, ``unreachable`` or ``timeout``), as when a peer has left the network."""
        if reason not in PEER_FAILURES:
            raise ValueError(f"unknown reason {reason!r}: use one of {sorted(PEER_FAILURES)}")
        with self._state_lock:
            self._offline.update(dict.fromkeys(usernames, reason))

    def fail_enqueues(self, count: int) -> None:
        """List the next ``count`` enqueued files as failed (:data:`ENQUEUE_ERROR`) without a
        transfer, as slskd does when adding one fails."""
        with self._state_lock:
            self._enqueue_errors = count

    def early_complete(self, seconds: float) -> None:
        """Let searches started from now on read ``Completed`` ``seconds`` before their
        responses and ``endedAt`` are stored (slskd's race between the two writes)."""
        with self._state_lock:
            self.finalize_delay = seconds

    def logged_out(self, value: bool = True, state: str = "Connected") -> None:
        """Be logged out of the Soulseek server (in ``state``: ``"Connected"`` or
        ``"Disconnected"``), or logged in again with ``value=False``, which also enqueues
        again what a :meth:`restart` left to resume."""
        if state not in LOGGED_OUT_STATES:
            raise ValueError(f"unknown state {state!r}: use one of {list(LOGGED_OUT_STATES)}")
        with self._state_lock:
            self.server_state = state if value else LOGGED_IN
        if not value:
            self._resume()

    def restart(self, downtime: float = 0.0) -> None:
        """Stop and start again as slskd does (see the module docstring): end what ran, refuse
        connections for ``downtime`` seconds, then enqueue again the transfers it ended."""
        if downtime < 0:
            raise ValueError(f"downtime must not be negative, not {downtime}")
        now = time.monotonic()
        with self._state_lock:
            self.restarts += 1
            unfinished = [t for t in self._transfers.values() if not transfer_done(t, now)]
            for transfer in unfinished:
                transfer.shut_down = now
            for search in self._searches.values():
                if not search_ended(search, now):
                    search.aborted = (now, "Completed, TimedOut")
            self._to_resume = [transfer.id for transfer in unfinished]
            self._down = downtime > 0
            if self._restart_timer is not None:
                self._restart_timer.cancel()
                self._restart_timer = None
            if self._down:
                self._restart_timer = threading.Timer(downtime, self._back_up)
                self._restart_timer.daemon = True
        if self._restart_timer is None:
            self._resume()
            return
        self.faults.outage(downtime, mode="refuse")
        self._restart_timer.start()

    def completed_downloads(self) -> list[tuple[str, str]]:
        """(username, file name) of every transfer that reads ``Completed, Succeeded`` by now,
        in the order they were enqueued, removed and deleted ones too."""
        now = time.monotonic()
        with self._state_lock:
            transfers = sorted([*self._transfers.values(), *self._deleted], key=_enqueued_order)
        return [
            (transfer.username, transfer.filename)
            for transfer in transfers
            if transfer_state(transfer, now)[0] == "Completed, Succeeded"
        ]

    @property
    def search_starts_in_flight(self) -> int:
        """Search starts being handled right now."""
        return self._starting

    @property
    def enqueues_in_flight(self) -> int:
        """Enqueue requests being handled right now."""
        return self._enqueuing

    def _control(self, request: Request) -> Response:
        name = request.path[len(FAULTS_PATH) :]
        controls: dict[str, Callable[[dict[str, Any]], None]] = {
            "busy_searches": lambda o: self.busy_searches(int(o["count"])),
            "busy_enqueues": lambda o: self.busy_enqueues(int(o["count"])),
            "fail_downloads": lambda o: self.fail_downloads(int(o["count"]), **_failure_options(o)),
            "fail_downloads_from": lambda o: self.fail_downloads_from(
                str(o["username"]), **_failure_options(o)
            ),
            "peers_offline": lambda o: self.peers_offline(
                *[str(name) for name in o["usernames"]], reason=str(o.get("reason", "offline"))
            ),
            "fail_enqueues": lambda o: self.fail_enqueues(int(o["count"])),
            "early_complete": lambda o: self.early_complete(float(o["seconds"])),
            "logged_out": lambda o: self.logged_out(
                _flag(o.get("value", True)), state=str(o.get("state", "Connected"))
            ),
            "restart": lambda o: self.restart(float(o.get("downtime", 0.0))),
            "hard_delete": lambda o: setattr(self, "hard_delete", _flag(o.get("value", True))),
            "version": lambda o: setattr(self, "version", _version(str(o["version"]))),
            "search_duration": lambda o: setattr(self, "search_duration", float(o["seconds"])),
            "transfer_duration": lambda o: setattr(self, "transfer_duration", float(o["seconds"])),
        }
        if name == "clear":
            self.clear_controls()
        if name not in controls:
            return super()._control(request)
        try:
            controls[name](request.json() or {})
        except (KeyError, TypeError, ValueError) as exc:
            return Response(400, {"error": f"bad control options: {exc}"})
        return Response(204)

    # -- routes ------------------------------------------------------------------------------

    def _routes_for_api(self) -> None:
        downloads = "/api/v0/transfers/downloads"
        routes = (
            ("GET", "/api/v0/server", self._server),
            ("GET", "/api/v0/session", self._session),
            ("POST", "/api/v0/searches", self._start_search),
            ("GET", "/api/v0/searches", self._list_searches),
            ("GET", "/api/v0/searches/{id}", self._get_search),
            ("PUT", "/api/v0/searches/{id}", self._stop_search),
            ("DELETE", "/api/v0/searches/{id}", self._delete_search),
            ("GET", "/api/v0/searches/{id}/responses", self._get_responses),
            ("GET", downloads, self._list_downloads),
            # ASP.NET prefers the literal segment: these come before downloads/{username}
            ("POST", f"{downloads}/batches", self._post_batch),
            ("GET", f"{downloads}/batches/{{id}}", self._get_batch),
            ("POST", f"{downloads}/{{username}}", self._post_per_user),
            ("GET", f"{downloads}/{{username}}", self._list_user_downloads),
            ("DELETE", f"{downloads}/all/completed", self._remove_completed),
            ("GET", f"{downloads}/{{username}}/{{id}}", self._get_download),
            ("DELETE", f"{downloads}/{{username}}/{{id}}", self._cancel_download),
            ("GET", f"{downloads}/{{username}}/{{id}}/position", self._position),
        )
        for method, pattern, handler in routes:
            self.route(method, pattern, self._authenticated(handler))
            self.route(method, f"{pattern}/", self._authenticated(handler))

    def _authenticated(self, handler: Callable[[Request], Response]) -> Callable[..., Response]:
        def guarded(request: Request) -> Response:
            if request.headers.get("x-api-key") != self.api_key:
                return Response(401)
            request.params = {key: unquote(value) for key, value in request.params.items()}
            return handler(request)

        return guarded

    # -- server and session ------------------------------------------------------------------

    def _server(self, request: Request) -> Response:
        return Response(200, server_json(self.server_state))

    def _session(self, request: Request) -> Response:
        """The API key is good (the authentication answered 401 otherwise)."""
        return Response(200)

    def _logged_out_message(self, operation: str) -> str | None:
        """The library's message for ``operation`` while slskd is not logged in, else ``None``."""
        state = self.server_state
        if state == LOGGED_IN:
            return None
        return LOGGED_OUT_MESSAGES[operation].format(state=state)

    # -- searches ----------------------------------------------------------------------------

    def _start_search(self, request: Request) -> Response:
        body, refusal = _bound_object(request, SEARCH_BODY)
        if refusal is not None:
            return refusal
        requested_id = body.get("id")
        if requested_id is not None and _guid(requested_id) is None:
            return Response(400, _not_convertible("System.Nullable`1[System.Guid]", "$.id"))
        text = body.get("searchText")
        if not isinstance(text, str) or not text.strip():
            return Response(400, SEARCH_TEXT_REQUIRED)
        search_id = _guid(requested_id) or str(uuid.uuid4())
        with self._state_lock:
            if self._busy_searches > 0 or self._starting >= 1:
                self._busy_searches = max(0, self._busy_searches - 1)
                return Response(429, CONCURRENT_OPERATION_MESSAGE)
            self._starting += 1
        try:
            if self.search_start_delay:
                time.sleep(self.search_start_delay)
            return self._new_search(search_id, text, body)
        finally:
            with self._state_lock:
                self._starting -= 1

    def _new_search(self, search_id: str, text: str, body: dict[str, Any]) -> Response:
        """Insert the search, as slskd does before asking Soulseek, then start it: 500 when
        the id is taken, 409 (the search kept as errored) when not logged in."""
        now = time.monotonic()
        responses = self._responses_for(text)
        search = SearchRecord(
            id=search_id,
            text=text,
            token=next(self._tokens),
            started_at=datetime.now(UTC),
            started=now,
            duration=self.search_duration if responses else _silence(body, self.search_duration),
            responses=responses,
            finalize_delay=self.finalize_delay,
        )
        with self._state_lock:
            if search_id in self._searches:
                return Response(500, DUPLICATE_SEARCH)
            self._searches[search_id] = search
            logged_out = self._logged_out_message("search")
            if logged_out is not None:
                search.aborted = (now, "Completed, Errored")
                return Response(409, logged_out)
            self.search_requests.append(body)
        return Response(200, search_json(search, time.monotonic(), with_responses=False))

    def _get_search(self, request: Request) -> Response:
        search = self._searches.get(_guid(request.params["id"]) or "")
        if search is None:
            return Response(404)
        with_responses = _query_flag(request, "includeResponses")
        return Response(200, search_json(search, time.monotonic(), with_responses=with_responses))

    def _get_responses(self, request: Request) -> Response:
        search = self._searches.get(_guid(request.params["id"]) or "")
        if search is None:
            return Response(404)
        return Response(200, stored_responses(search, time.monotonic()))

    def _list_searches(self, request: Request) -> Response:
        now = time.monotonic()
        with self._state_lock:
            searches = list(self._searches.values())
        listed = [search_json(search, now, with_responses=False) for search in searches]
        return Response(200, listed)

    def _stop_search(self, request: Request) -> Response:
        search = self._searches.get(_guid(request.params["id"]) or "")
        if search is None:
            return Response(404)
        with self._state_lock:
            now = time.monotonic()
            if search.stopped is None and search.aborted is None and not search_ended(search, now):
                search.stopped = now
        return Response(200)

    def _delete_search(self, request: Request) -> Response:
        with self._state_lock:
            removed = self._searches.pop(_guid(request.params["id"]) or "", None)
        return Response(404) if removed is None else Response(204)

    def _responses_for(self, text: str) -> list[dict[str, Any]]:
        numbers = self._track_words.having_all(_words(text))
        tracks = [(number, self.catalog[number - 1]) for number in numbers]
        responses = []
        for peer in self.peers:
            files = [file_json(peer, track, number, peer.extension) for number, track in tracks]
            extras = [extra_json(peer, track, name) for _, track in tracks for name in peer.extras]
            locked = []
            if peer.locked_extension:
                locked = [
                    file_json(peer, track, number, peer.locked_extension, locked=True)
                    for number, track in tracks
                ]
            if files:
                responses.append(response_json(peer, files + extras, locked, next(self._tokens)))
        return responses

    # -- enqueueing --------------------------------------------------------------------------

    def _post_per_user(self, request: Request) -> Response:
        username = request.params["username"]
        body = _json_or_none(request)
        response = self._enqueue_per_user(request, username)
        self._record_enqueue(username, _filenames(body), PER_USER, response.status)
        return response

    @property
    def has_batches(self) -> bool:
        """Whether this slskd has the batches endpoint: 0.26 and later, unless it speaks the
        enqueue answer of the versions before 0.24 (:attr:`legacy_enqueue`)."""
        return self.version >= BATCHES_SINCE and not self.legacy_enqueue

    def _post_batch(self, request: Request) -> Response:
        if not self.has_batches:  # no such route: POST downloads/{username} takes it
            request.params = {"username": "batches"}
            return self._post_per_user(request)
        body = _json_or_none(request)
        response = self._enqueue_batch(request)
        fields = body if isinstance(body, dict) else {}
        username = fields.get("username")
        files = _filenames(fields.get("files"))
        self._record_enqueue(
            username if isinstance(username, str) else "", files, BATCH, response.status
        )
        return response

    def _record_enqueue(
        self, username: str, files: tuple[str, ...], endpoint: str, status: int
    ) -> None:
        with self._state_lock:
            self.enqueue_requests.append(EnqueueRequest(username, files, endpoint, status))

    def _enqueue_per_user(self, request: Request, username: str) -> Response:
        """``TransfersController.EnqueueAsync``: the body binds to a list of files, then the
        shared limit, then the peer, then each file."""
        files, refusal = _per_user_files(request)
        if refusal is not None:
            return refusal
        with self._enqueue_slot() as admitted:
            if not admitted:
                return Response(429, CONCURRENT_OPERATION_MESSAGE)
            peer_failure = self._peer_failure(username)
            failure = self._logged_out_message("enqueue") or (peer_failure and peer_failure[1])
            if failure:  # slskd's controller answers any exception with 500 and its message
                return Response(500, failure)
            enqueued, failed = self._enqueue_files(username, files)
        if self.legacy_enqueue or self.version < "0.24":
            return Response(201)
        now = time.monotonic()
        return Response(
            201,
            {
                "enqueued": [transfer_json(transfer, now) for transfer in enqueued],
                "failed": [self._failed_entry(filename) for filename, _ in failed],
            },
        )

    def _enqueue_batch(self, request: Request) -> Response:
        """``TransfersController.EnqueueBatchAsync``: validation, the shared limit, the peer's
        endpoint, the batch record, then each file."""
        batch, files, refusal = _batch_request(request)
        if refusal is not None:
            return refusal
        with self._enqueue_slot() as admitted:
            if not admitted:
                return Response(429, CONCURRENT_OPERATION_MESSAGE)
            logged_out = self._logged_out_message("enqueue")
            if logged_out is not None:
                return Response(500, logged_out)
            failure = self._peer_failure(batch.username)
            if failure is not None and failure[0] != "unreachable":
                # the server has no endpoint for the user (404), or did not answer in time
                return Response(404 if failure[0] == "offline" else 500, failure[1])
            with self._state_lock:
                if batch.id in self._batches:
                    return Response(409, DUPLICATE_BATCH.format(id=batch.id))
                self._batches[batch.id] = batch
            if failure is not None:  # the batch is created before slskd connects to the peer
                return Response(500, failure[1])
            enqueued, failed = self._enqueue_files(batch.username, files, batch_id=batch.id)
        status = 200 if len(failed) == len(files) else 207 if failed else 201
        body = {
            "batch": self._batch_json(batch),
            "failures": [{"filename": name, "message": message} for name, message in failed],
        }
        return Response(status, body)

    @contextmanager
    def _enqueue_slot(self) -> Iterator[bool]:
        """A place among the enqueue requests handled at once (``False``: none is free, slskd
        answers 429), held for ``enqueue_delay`` and the body of the ``with``."""
        with self._state_lock:
            admitted = self._busy_enqueues <= 0 and self._enqueuing < MAX_CONCURRENT_ENQUEUES
            if admitted:
                self._enqueuing += 1
            else:
                self._busy_enqueues = max(0, self._busy_enqueues - 1)
        if not admitted:
            yield False
            return
        try:
            if self.enqueue_delay:
                time.sleep(self.enqueue_delay)
            yield True
        finally:
            with self._state_lock:
                self._enqueuing -= 1

    def _peer_failure(self, username: str) -> tuple[str, str] | None:
        """(reason, slskd's message) when ``username`` cannot be reached (offline, or no such
        peer; unreachable; too slow), else ``None``."""
        with self._state_lock:
            reason = self._offline.get(username)
        if reason is None and all(peer.username != username for peer in self.peers):
            reason = "offline"
        return None if reason is None else (reason, PEER_FAILURES[reason].format(user=username))

    def _enqueue_files(
        self, username: str, files: list[tuple[str, int]], batch_id: str | None = None
    ) -> tuple[list[TransferRecord], list[tuple[str, str]]]:
        """Enqueue each file as ``DownloadService.EnqueueAsync`` does: skip one already being
        downloaded from this peer, else add a transfer in ``Queued, Locally`` and mark the
        older records of that file removed. Returns the transfers added and the (file name,
        message) of the files that were not."""
        shared = self._shared_by(username)
        enqueued, failed = [], []
        for filename, size in files:
            now = time.monotonic()
            with self._state_lock:
                history = self._history.setdefault((username, filename), [])
                latest = self._transfers.get(history[-1]) if history else None
                if latest is not None and not transfer_done(latest, now):
                    failed.append((filename, ALREADY_IN_PROGRESS))
                    continue
                if self._enqueue_errors > 0:  # adding the transfer failed
                    self._enqueue_errors -= 1
                    failed.append((filename, ENQUEUE_ERROR))
                    continue
                failure, failure_at = self._failing_peers.get(username), 1.0
                if failure is None and self._failures:
                    failure = self._failures.pop(0)
                if filename not in shared:
                    failure, failure_at = NOT_SHARED, REJECTED_AT
                transfer = TransferRecord(
                    id=str(uuid.uuid4()),
                    username=username,
                    filename=filename,
                    size=shared.get(filename, size),
                    requested_at=datetime.now(UTC),
                    started=now,
                    duration=self.transfer_duration,
                    failure=failure,
                    failure_at=failure_at,
                    place_in_queue=self._queue_length(username) + 1,
                    batch_id=batch_id,
                )
                for older in history:
                    if older in self._transfers:
                        self._transfers[older].removed = True
                self._transfers[transfer.id] = transfer
                history.append(transfer.id)
                if batch_id is not None:
                    self._batches[batch_id].transfer_ids.append(transfer.id)
            enqueued.append(transfer)
        return enqueued, failed

    def _failed_entry(self, filename: str) -> Any:
        """One ``failed`` entry of the per-user endpoint as this slskd version writes it: the
        file name (0.24-0.25), or a (file name, message) tuple that System.Text.Json
        serializes as ``{}`` (0.26), the message lost either way."""
        return filename if self.version in ("0.24", "0.25") else {}

    def _queue_length(self, username: str) -> int:
        return next((peer.queue_length for peer in self.peers if peer.username == username), 0)

    def _shared_by(self, username: str) -> dict[str, int]:
        """The unlocked audio files ``username`` shares, by file name, with their sizes."""
        return self._shared.get(username, {})

    def _files_of(self, peer: Peer) -> dict[str, int]:
        files = [
            file_json(peer, track, number, peer.extension)
            for number, track in enumerate(self.catalog, start=1)
        ]
        return {item["filename"]: item["size"] for item in files}

    # -- batches -----------------------------------------------------------------------------

    def _get_batch(self, request: Request) -> Response:
        if not self.has_batches:  # no such route: GET downloads/{username}/{id} takes it
            request.params = {"username": "batches", "id": request.params["id"]}
            return self._get_download(request)
        batch_id = _guid(request.params["id"])
        if batch_id is None:
            return Response(
                400, f"The specified id {request.params['id']} is not a valid GUID/UUID"
            )
        batch = self._batches.get(batch_id)
        if batch is None:
            return Response(404)
        return Response(200, self._batch_json(batch))

    def _batch_json(self, batch: BatchRecord) -> dict[str, Any]:
        now = time.monotonic()
        with self._state_lock:
            transfers = [self._transfers[id] for id in batch.transfer_ids if id in self._transfers]
        return batch_json(batch, transfers, now)

    # -- downloads ---------------------------------------------------------------------------

    def _list_downloads(self, request: Request) -> Response:
        include_removed = _query_flag(request, "includeRemoved")
        now = time.monotonic()
        with self._state_lock:
            transfers = [t for t in self._transfers.values() if include_removed or not t.removed]
        users = list(dict.fromkeys(transfer.username for transfer in transfers))
        return Response(200, [user_json(user, transfers, now) for user in sorted(users)])

    def _list_user_downloads(self, request: Request) -> Response:
        """One user's downloads, never the removed ones (this route takes no
        ``includeRemoved``); 404 when there are none."""
        username = request.params["username"]
        with self._state_lock:
            transfers = [
                t for t in self._transfers.values() if t.username == username and not t.removed
            ]
        if not transfers:
            return Response(404)
        return Response(200, user_json(username, transfers, time.monotonic()))

    def _get_download(self, request: Request) -> Response:
        transfer_id = _guid(request.params["id"])
        if transfer_id is None:
            return Response(400)
        transfer = self._transfers.get(transfer_id)
        if transfer is None:
            return Response(404)
        return Response(200, transfer_json(transfer, time.monotonic()))

    def _cancel_download(self, request: Request) -> Response:
        """Cancel the transfer if it has not ended; with ``remove``, mark it removed if it had
        (or delete it, with :attr:`hard_delete`). 204 for an unknown id, as slskd's
        ``TryCancel`` and ``Remove`` find nothing to do and raise nothing."""
        transfer_id = _guid(request.params["id"])
        if transfer_id is None:
            return Response(400)
        remove = _query_flag(request, "remove")
        now = time.monotonic()
        with self._state_lock:
            transfer = self._transfers.get(transfer_id)
            if transfer is None:
                return Response(404) if self.hard_delete else Response(204)
            ended = transfer_done(transfer, now)
            if not ended:
                transfer.cancelled = now
            if remove and self.hard_delete:
                self._deleted.append(self._transfers.pop(transfer_id))
            elif remove and ended:
                transfer.removed = True
        return Response(204)

    def _remove_completed(self, request: Request) -> Response:
        """Mark every ended download removed (``ClearCompletedDownloads``), or delete them
        with :attr:`hard_delete`."""
        now = time.monotonic()
        with self._state_lock:
            for transfer in list(self._transfers.values()):
                if transfer.removed or not transfer_done(transfer, now):
                    continue
                if self.hard_delete:
                    self._deleted.append(self._transfers.pop(transfer.id))
                else:
                    transfer.removed = True
        return Response(204)

    def _position(self, request: Request) -> Response:
        """The download's place in the peer's queue, which slskd asks the peer for: 500 with
        the library's message when slskd is logged out, the download is no longer active or
        the peer is gone."""
        transfer_id = _guid(request.params["id"])
        if transfer_id is None:
            return Response(400)
        transfer = self._transfers.get(transfer_id)
        if transfer is None:
            return Response(404)
        logged_out = self._logged_out_message("position")
        if logged_out is not None:
            return Response(500, logged_out)
        state, _, _ = transfer_state(transfer, time.monotonic())
        name, user = transfer.filename, transfer.username
        if state.startswith("Completed"):
            return Response(500, f"A download of {name} from user {user} is not active")
        failure = self._peer_failure(user)
        if failure is not None:
            reason, message = failure
            if reason == "unreachable":
                message = (
                    f"Failed to fetch place in queue for download of {name} from {user}: {message}"
                )
            return Response(500, message)
        return Response(200, transfer.place_in_queue if state == "Queued, Remotely" else 0)

    # -- restarting --------------------------------------------------------------------------

    def _back_up(self) -> None:
        """The restart's downtime is over: enqueue again what it shut down, if logged in."""
        with self._state_lock:
            self._down = False
            self._restart_timer = None
        self._resume()

    def _resume(self) -> None:
        """Enqueue again, per user, the transfers the last restart shut down that are not
        removed, once the server is up and logged in (``Application.Client_LoggedIn``)."""
        with self._state_lock:
            if self._down or self.server_state != LOGGED_IN or not self._to_resume:
                return
            ids, self._to_resume = self._to_resume, []
            transfers = [self._transfers[id] for id in ids if id in self._transfers]
        by_user: dict[str, list[tuple[str, int]]] = {}
        for transfer in transfers:
            if not transfer.removed:
                by_user.setdefault(transfer.username, []).append((transfer.filename, transfer.size))
        for username, files in by_user.items():
            if self._peer_failure(username) is None:  # slskd logs the failure and goes on
                self._enqueue_files(username, files)


# -- reading requests as ASP.NET binds them ------------------------------------------------------


def _json_or_none(request: Request) -> Any:
    """The request's JSON body, or ``None`` when it has none or it is not JSON."""
    try:
        return json.loads(request.body) if request.body.strip() else None
    except ValueError:
        return None


def _bound(request: Request, type_name: str) -> tuple[Any, Response | None]:
    """The request's JSON body, or the 400 slskd answers when ASP.NET cannot read one."""
    if not request.body.strip():
        return None, Response(400, EMPTY_BODY)
    try:
        return json.loads(request.body), None
    except ValueError:
        return None, Response(400, _not_convertible(type_name, "$"))


def _bound_object(request: Request, type_name: str) -> tuple[dict[str, Any], Response | None]:
    """The request's body as a JSON object, or slskd's 400 (``null`` binds to no request,
    which slskd then reads a field of: 500)."""
    body, refusal = _bound(request, type_name)
    if refusal is not None:
        return {}, refusal
    if body is None:
        return {}, Response(500, NULL_REFERENCE)
    if not isinstance(body, dict):
        return {}, Response(400, _not_convertible(type_name, "$"))
    return body, None


def _per_user_files(request: Request) -> tuple[list[tuple[str, int]], Response | None]:
    """The files of a ``POST downloads/{username}`` as (name, size), or slskd's 400."""
    body, refusal = _bound(request, PER_USER_BODY)
    if refusal is not None:
        return [], refusal
    if body is not None and not isinstance(body, list):
        return [], Response(400, _not_convertible(PER_USER_BODY, "$"))
    items = body or []
    for index, item in enumerate(items):
        if item is not None and not isinstance(item, dict):
            return [], Response(400, _not_convertible(PER_USER_ITEM, f"$[{index}]"))
    missing = [item for item in items if item is not None and not _text(item.get("filename"))]
    if missing:
        return [], Response(400, " ".join(["The Filename field is required."] * len(missing)))
    if not items:
        return [], Response(400, NO_FILES)
    if any(item is None for item in items):
        return [], Response(400, NULL_FILES)
    return [(item["filename"], _size_of(item)) for item in items], None


def _batch_request(
    request: Request,
) -> tuple[BatchRecord, list[tuple[str, int]], Response | None]:
    """The batch a ``POST downloads/batches`` asks for and its files, or slskd's refusal:
    the model validation's messages in the order of ``EnqueueDownloadBatchRequest``'s
    fields, then the controller's checks."""
    none = BatchRecord(id="", username="", created_at=datetime.now(UTC))
    body, refusal = _bound_object(request, BATCH_BODY)
    if refusal is not None:
        return none, [], refusal
    errors = []
    for field, name in (("id", "Id"), ("searchId", "SearchId")):
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            return none, [], Response(400, _not_convertible("System.String", f"$.{field}"))
        if _guid(value) is None:
            errors.append(f"The {name} field must be a valid GUID/UUID")
        elif uuid.UUID(_guid(value) or "").int == 0:
            errors.append(f"The {name} field must not contain an empty GUID/UUID")
    username = body.get("username")
    if not _text(username):
        errors.append("The Username field is required.")
    items = body.get("files")
    if items is not None and not isinstance(items, list):
        return none, [], Response(400, _not_convertible(BATCH_FILES, "$.files"))
    if items is None:
        errors.append("The Files field is required.")
    elif not items:
        errors.append(
            "The field Files must be a string or array type with a minimum length of '1'."
        )
    for item in items or ():
        if item is not None and not isinstance(item, dict):
            return none, [], Response(400, _not_convertible(BATCH_ITEM, "$.files"))
        size = item.get("size") if isinstance(item, dict) else None
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            return none, [], Response(400, _not_convertible("System.Int64", "$.files"))
        if isinstance(item, dict):
            if not _text(item.get("filename")):
                errors.append("The Filename field is required.")
            errors.extend(_size_errors(item.get("size")))
    if errors:
        return none, [], Response(400, " ".join(errors))
    if any(item is None for item in items):
        return none, [], Response(400, NULL_FILES)
    names = [item["filename"] for item in items]
    if len(set(names)) != len(names):
        return none, [], Response(400, REPEATED_FILES)
    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    destination = options.get("destination")
    batch = BatchRecord(
        id=_guid(body.get("id") or "") or str(uuid.uuid4()),
        username=username,
        created_at=datetime.now(UTC),
        search_id=_guid(body.get("searchId") or ""),
        destination=destination if isinstance(destination, str) else None,
    )
    return batch, [(item["filename"], item["size"]) for item in items], None


def _size_errors(size: Any) -> list[str]:
    """The model validation's messages for a batch file's ``size`` (a whole number)."""
    if size is None:
        return ["The Size field is required."]
    if size < 0:
        return [f"The field Size must be between 0 and {2**63 - 1}."]
    return []


def _filenames(files: Any) -> tuple[str, ...]:
    """The file names in an enqueue body's list of files, those that are there."""
    if not isinstance(files, list):
        return ()
    return tuple(
        item["filename"]
        for item in files
        if isinstance(item, dict) and isinstance(item.get("filename"), str)
    )


def _not_convertible(type_name: str, path: str) -> str:
    return NOT_CONVERTIBLE.format(type=type_name, path=path)


def _guid(value: Any) -> str | None:
    """``value`` as .NET reads a GUID, in slskd's writing (lower case, hyphenated), or
    ``None`` when it is not one."""
    if not isinstance(value, str) or not GUID.match(value.strip()):
        return None
    return str(uuid.UUID(value.strip().strip("{}()")))


def _query_flag(request: Request, name: str) -> bool:
    """A ``bool`` query parameter as ASP.NET binds it: ``true`` in any case; anything else,
    or nothing, is false."""
    return request.query.get(name, "").strip().lower() == "true"


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _enqueued_order(transfer: TransferRecord) -> float:
    return transfer.started


# -- checking control options -------------------------------------------------------------------


def _failure(state: str, exception: str) -> tuple[str, str]:
    if not state.startswith("Completed,") or "Succeeded" in state:
        raise ValueError(f"a failed transfer's state must be 'Completed, <failure>', not {state!r}")
    return state, exception


def _silence(body: dict[str, Any], default: float) -> float:
    """Seconds a search without any response runs: its ``searchTimeout`` (milliseconds of
    silence after which Soulseek.NET ends a search ``Completed, TimedOut``), when given."""
    try:
        timeout = float(body.get("searchTimeout")) / 1000
    except (TypeError, ValueError):
        return default
    return max(default, timeout) if timeout > 0 else default


def _version(version: str) -> str:
    if version not in VERSIONS:
        raise ValueError(f"unknown slskd version {version!r}: use one of {list(VERSIONS)}")
    return version


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, not {value!r}")
    return value


def _failure_options(options: dict[str, Any]) -> dict[str, str]:
    return {key: str(options[key]) for key in ("state", "exception") if key in options}


def _size_of(item: Any) -> int:
    try:
        return int(item.get("size") or 0)
    except (AttributeError, TypeError, ValueError):
        return 0


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\w+", text.casefold()))
