"""A fake slskd daemon: searches over the shared catalog and downloads that progress over time.

It speaks the REST API v0 endpoints :class:`~soulspot_jobs.clients.slskd.SlskdClient` and the
``slskd-api`` package use, with slskd's camelCase JSON (null fields left out), ISO timestamps,
GUID ids and comma-joined states, and requires the ``X-API-Key`` header (401 otherwise). Routes
match with or without a trailing slash, as ASP.NET's do. This module is the server and its
controls; the peers, searches and transfers it serves, and their JSON, are in
:mod:`soulspot_jobs.fakes.slskd_network`.

* A search whose words all occur in a catalog track's artist, album and title finds that track:
  it stays ``"InProgress"`` for ``search_duration`` seconds (its counts growing as responses
  arrive), then ends ``"Completed, ResponseLimitReached"`` with one response per peer of
  :data:`PEERS` (a 16-bit FLAC, a 320 kbit/s MP3 whose extension field is empty, a 128 kbit/s
  MP3, a busy, slow peer with a locked FLAC). Any other search ends ``"Completed, TimedOut"``
  with none. As in slskd, the responses are stored (and ``endedAt`` set) only when the search
  ends; until then ``GET .../responses`` answers ``[]``. ``GET /api/v0/searches`` lists them.
* Only one search start at a time: an overlapping start (slow when ``search_start_delay`` is set)
  answers 429 ``Only one concurrent operation is permitted``; at most two enqueue requests at a
  time (``enqueue_delay``), 429 beyond.
* An enqueue from a peer that is offline (or unknown) answers 500 with the Soulseek library's
  message as a JSON string, as slskd's controller does for any exception. A file already being
  downloaded from that peer is not enqueued twice: it is listed in ``failed`` ("Skipped: Already
  in progress"), in the shape of ``version``: file names on 0.24-0.25, ``{}`` on 0.26 (slskd
  serializes its tuples as empty objects); before 0.24 (or with ``legacy_enqueue``) the answer
  is a bare 201.
* A download moves ``Queued, Locally`` -> ``Requested`` -> ``Queued, Remotely`` ->
  ``Initializing`` -> ``InProgress`` -> ``Completed, Succeeded`` over ``transfer_duration``
  seconds, computed on each read; a file the peer does not share ends ``Completed, Rejected``.
  ``GET .../{username}/{id}/position`` answers its place in the peer's queue.

Controls, besides the base fault controls, from Python or as ``POST /_faults/<name>``:
``busy_searches {"count"}`` and ``busy_enqueues {"count"}`` (the next starts answer 429),
``fail_downloads {"count", "state"?, "exception"?}`` (the next enqueued transfers end failed),
``fail_downloads_from {"username", "state"?, "exception"?}`` (every transfer from that peer
fails), ``peers_offline {"usernames", "reason"?}`` (enqueues from them answer 500; reason
``offline``, ``unreachable`` or ``timeout``), ``fail_enqueues {"count"}`` (the next files are
listed in ``failed``, without a transfer), ``early_complete {"seconds"}`` (searches read
``Completed`` that long before their responses and ``endedAt`` are stored, slskd's known
race), ``version {"version"}``, ``search_duration {"seconds"}``, ``transfer_duration
{"seconds"}``; ``clear`` resets them with the base faults.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from soulspot_jobs.fakes.catalog import CATALOG, CatalogTrack
from soulspot_jobs.fakes.index import KeyIndex
from soulspot_jobs.fakes.server import FAULTS_PATH, FakeServer, Request, Response
from soulspot_jobs.fakes.slskd_network import (
    PEERS,
    REJECTED_AT,
    Peer,
    SearchRecord,
    TransferRecord,
    extra_json,
    file_json,
    response_json,
    schedule_fraction,
    search_complete,
    search_json,
    stored_responses,
    transfer_json,
    transfer_state,
    user_json,
)

__all__ = ["PEERS", "FakeSlskd", "Peer"]

#: slskd's answer to a search start overlapping another one, and to a third enqueue at once.
CONCURRENT_OPERATION_MESSAGE = (
    "Only one concurrent operation is permitted. Wait until the previous request completes"
)
#: Enqueue requests slskd handles at once; more answer 429.
MAX_CONCURRENT_ENQUEUES = 2
#: Default reason of a download failed by :meth:`FakeSlskd.fail_downloads`.
DEFAULT_FAILURE = "Transfer failed: the remote peer closed the connection"
#: slskd's ``failed`` entry for a file it is already downloading from that peer.
ALREADY_IN_PROGRESS = "Skipped: Already in progress"
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
#: slskd versions whose enqueue answer the fake can speak (see the module docstring).
VERSIONS = ("0.23", "0.24", "0.25", "0.26")


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
        #: The slskd version whose enqueue answer is spoken (one of :data:`VERSIONS`).
        self.version = _version(version)
        #: Body of every search start accepted, in order.
        self.search_requests: list[dict[str, Any]] = []
        self._state_lock = threading.Lock()
        self._searches: dict[str, SearchRecord] = {}
        self._transfers: dict[str, TransferRecord] = {}
        #: (username, file name) -> id of the latest transfer of that file from that user: the
        #: only one that may be unfinished, as a new one is added only once it finished.
        self._latest: dict[tuple[str, str], str] = {}
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
        """Make enqueues from ``usernames`` answer 500 with slskd's message for ``reason``
        (``offline``, ``unreachable`` or ``timeout``), as when a peer has left the network."""
        if reason not in PEER_FAILURES:
            raise ValueError(f"unknown reason {reason!r}: use one of {sorted(PEER_FAILURES)}")
        with self._state_lock:
            self._offline.update(dict.fromkeys(usernames, reason))

    def fail_enqueues(self, count: int) -> None:
        """List the next ``count`` enqueued files in ``failed`` without a transfer, as slskd
        does when adding one fails (``"Error: ..."``, a reason its answer loses)."""
        with self._state_lock:
            self._enqueue_errors = count

    def early_complete(self, seconds: float) -> None:
        """Let searches started from now on read ``Completed`` ``seconds`` before their
        responses and ``endedAt`` are stored (slskd's race between the two writes)."""
        with self._state_lock:
            self.finalize_delay = seconds

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
        routes = (
            ("POST", "/api/v0/searches", self._start_search),
            ("GET", "/api/v0/searches", self._list_searches),
            ("GET", "/api/v0/searches/{id}", self._get_search),
            ("PUT", "/api/v0/searches/{id}", self._stop_search),
            ("DELETE", "/api/v0/searches/{id}", self._delete_search),
            ("GET", "/api/v0/searches/{id}/responses", self._get_responses),
            ("GET", "/api/v0/transfers/downloads", self._list_downloads),
            ("POST", "/api/v0/transfers/downloads/{username}", self._enqueue),
            ("GET", "/api/v0/transfers/downloads/{username}", self._list_user_downloads),
            ("GET", "/api/v0/transfers/downloads/{username}/{id}", self._get_download),
            ("DELETE", "/api/v0/transfers/downloads/{username}/{id}", self._cancel_download),
            ("GET", "/api/v0/transfers/downloads/{username}/{id}/position", self._position),
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

    # -- searches ----------------------------------------------------------------------------

    def _start_search(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict) or not str(body.get("searchText") or "").strip():
            return Response(400, text="The SearchText field is required.")
        search_id = str(body.get("id") or uuid.uuid4())
        with self._state_lock:
            if search_id in self._searches:
                return Response(409, text=f"A search with ID {search_id} already exists.")
            if self._busy_searches > 0 or self._starting >= 1:
                self._busy_searches = max(0, self._busy_searches - 1)
                return Response(429, text=CONCURRENT_OPERATION_MESSAGE)
            self._starting += 1
        try:
            if self.search_start_delay:
                time.sleep(self.search_start_delay)
            search = SearchRecord(
                id=search_id,
                text=str(body["searchText"]),
                token=next(self._tokens),
                started_at=datetime.now(UTC),
                started=time.monotonic(),
                duration=self.search_duration,
                responses=self._responses_for(str(body["searchText"])),
                finalize_delay=self.finalize_delay,
            )
            with self._state_lock:
                self._searches[search_id] = search
                self.search_requests.append(body)
        finally:
            with self._state_lock:
                self._starting -= 1
        return Response(200, search_json(search, time.monotonic(), with_responses=False))

    def _get_search(self, request: Request) -> Response:
        search = self._searches.get(request.params["id"])
        if search is None:
            return Response(404)
        with_responses = request.query.get("includeResponses", "false").lower() == "true"
        return Response(200, search_json(search, time.monotonic(), with_responses=with_responses))

    def _get_responses(self, request: Request) -> Response:
        search = self._searches.get(request.params["id"])
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
        search = self._searches.get(request.params["id"])
        if search is None:
            return Response(404)
        with self._state_lock:
            if search.stopped is None and not search_complete(search, time.monotonic()):
                search.stopped = time.monotonic()
        return Response(200)

    def _delete_search(self, request: Request) -> Response:
        with self._state_lock:
            removed = self._searches.pop(request.params["id"], None)
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

    # -- downloads ---------------------------------------------------------------------------

    def _enqueue(self, request: Request) -> Response:
        username = request.params["username"]
        body = request.json()
        if not isinstance(body, list) or not body:
            return Response(400, text="At least one file is required")
        with self._state_lock:
            if self._busy_enqueues > 0 or self._enqueuing >= MAX_CONCURRENT_ENQUEUES:
                self._busy_enqueues = max(0, self._busy_enqueues - 1)
                return Response(429, text=CONCURRENT_OPERATION_MESSAGE)
            self._enqueuing += 1
        try:
            if self.enqueue_delay:
                time.sleep(self.enqueue_delay)
            peer_failure = self._peer_failure(username)
            if peer_failure is not None:
                # slskd's controller answers any exception with 500 and its message
                return Response(500, peer_failure)
            enqueued, failed = self._enqueue_files(username, body)
        finally:
            with self._state_lock:
                self._enqueuing -= 1
        if self.legacy_enqueue or self.version < "0.24":
            return Response(201)
        return Response(201, {"enqueued": enqueued, "failed": failed})

    def _peer_failure(self, username: str) -> str | None:
        """slskd's message when ``username`` cannot be reached (offline, or no such peer)."""
        with self._state_lock:
            reason = self._offline.get(username)
        if reason is None and all(peer.username != username for peer in self.peers):
            reason = "offline"
        return None if reason is None else PEER_FAILURES[reason].format(user=username)

    def _enqueue_files(self, username: str, files: list[Any]) -> tuple[list[dict], list[Any]]:
        """Enqueue each file as slskd does: skip one already being downloaded from this peer,
        else add a transfer in ``Queued, Locally``; what was not enqueued goes in ``failed``."""
        shared = self._shared_by(username)
        enqueued, failed = [], []
        for item in files:
            filename = str(item.get("filename") or "") if isinstance(item, dict) else ""
            now = time.monotonic()
            with self._state_lock:
                latest = self._transfers.get(self._latest.get((username, filename), ""))
                busy = latest is not None and not transfer_state(latest, now)[0].startswith(
                    "Completed"
                )
                if busy:  # "Skipped: Already in progress"
                    failed.append(self._failed_entry(filename))
                    continue
                if self._enqueue_errors > 0:  # "Error: ..." when adding the transfer failed
                    self._enqueue_errors -= 1
                    failed.append(self._failed_entry(filename))
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
                    size=shared.get(filename, _size_of(item)),
                    requested_at=datetime.now(UTC),
                    started=now,
                    duration=self.transfer_duration,
                    failure=failure,
                    failure_at=failure_at,
                    place_in_queue=self._queue_length(username) + 1,
                )
                self._transfers[transfer.id] = transfer
                self._latest[(username, filename)] = transfer.id
            enqueued.append(transfer_json(transfer, now))
        return enqueued, failed

    def _failed_entry(self, filename: str) -> Any:
        """One ``failed`` entry as this slskd version writes it: the file name (0.24-0.25), or
        a (file name, message) tuple that System.Text.Json serializes as ``{}`` (0.26), the
        message (:data:`ALREADY_IN_PROGRESS`, ``"Error: ..."``) lost either way."""
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

    def _list_downloads(self, request: Request) -> Response:
        now = time.monotonic()
        with self._state_lock:
            transfers = list(self._transfers.values())
        users = sorted({transfer.username for transfer in transfers})
        return Response(200, [user_json(user, transfers, now) for user in users])

    def _list_user_downloads(self, request: Request) -> Response:
        username = request.params["username"]
        with self._state_lock:
            transfers = [t for t in self._transfers.values() if t.username == username]
        if not transfers:
            return Response(404)
        return Response(200, user_json(username, transfers, time.monotonic()))

    def _get_download(self, request: Request) -> Response:
        transfer = self._transfer(request)
        if transfer is None:
            return Response(404)
        return Response(200, transfer_json(transfer, time.monotonic()))

    def _cancel_download(self, request: Request) -> Response:
        transfer = self._transfer(request)
        if transfer is None:
            return Response(404)
        now = time.monotonic()
        with self._state_lock:
            if request.query.get("remove", "false").lower() == "true":
                del self._transfers[transfer.id]
            elif transfer.cancelled is None and schedule_fraction(transfer, now) < 1.0:
                transfer.cancelled = now
        return Response(204)

    def _position(self, request: Request) -> Response:
        """The download's place in the peer's queue, which slskd asks the peer for: 500 with
        the library's message when the peer is gone or the download is no longer active."""
        transfer = self._transfer(request)
        if transfer is None:
            return Response(404)
        peer_failure = self._peer_failure(transfer.username)
        if peer_failure is not None:
            return Response(500, peer_failure)
        state, _, _ = transfer_state(transfer, time.monotonic())
        if state.startswith("Completed"):
            name, user = transfer.filename, transfer.username
            return Response(500, f"A download of {name} from user {user} is not active")
        return Response(200, transfer.place_in_queue if state == "Queued, Remotely" else 0)

    def _transfer(self, request: Request) -> TransferRecord | None:
        transfer = self._transfers.get(request.params["id"])
        if transfer is None or transfer.username != request.params["username"]:
            return None
        return transfer


# -- checking control options -------------------------------------------------------------------


def _failure(state: str, exception: str) -> tuple[str, str]:
    if not state.startswith("Completed,") or "Succeeded" in state:
        raise ValueError(f"a failed transfer's state must be 'Completed, <failure>', not {state!r}")
    return state, exception


def _version(version: str) -> str:
    if version not in VERSIONS:
        raise ValueError(f"unknown slskd version {version!r}: use one of {list(VERSIONS)}")
    return version


def _failure_options(options: dict[str, Any]) -> dict[str, str]:
    return {key: str(options[key]) for key in ("state", "exception") if key in options}


def _size_of(item: Any) -> int:
    try:
        return int(item.get("size") or 0)
    except (AttributeError, TypeError, ValueError):
        return 0


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\w+", text.casefold()))

