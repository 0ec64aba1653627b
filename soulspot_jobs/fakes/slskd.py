"""A fake slskd daemon: searches over the shared catalog and downloads that progress over time.

It speaks the REST API v0 endpoints :class:`~soulspot_jobs.clients.slskd.SlskdClient` uses, with
slskd's camelCase JSON, ISO timestamps, GUID ids and comma-joined states, and requires the
``X-API-Key`` header (401 otherwise).

* A search whose words all occur in a catalog track's artist, album and title finds that track:
  it stays ``"InProgress"`` for ``search_duration`` seconds (responses arriving little by little),
  then ends ``"Completed, ResponseLimitReached"`` with one response per peer of :data:`PEERS`
  (a 16-bit FLAC, a 320 kbit/s MP3 whose extension field is empty, a 128 kbit/s MP3, a busy,
  slow peer with a locked FLAC). Any other search ends ``"Completed, TimedOut"`` with none.
* Only one search start at a time: an overlapping start (slow when ``search_start_delay`` is set)
  answers 429 ``Only one concurrent operation is permitted``; at most two enqueue requests at a
  time (``enqueue_delay``), 429 beyond.
* A download moves ``Requested`` -> ``Queued, Remotely`` -> ``Initializing`` -> ``InProgress``
  -> ``Completed, Succeeded`` over ``transfer_duration`` seconds, computed on each read.

Controls, besides the base fault controls, from Python or as ``POST /_faults/<name>``:
``busy_searches {"count"}`` and ``busy_enqueues {"count"}`` (the next starts answer 429),
``fail_downloads {"count", "state"?, "exception"?}`` (the next enqueued transfers end failed),
``fail_downloads_from {"username", "state"?, "exception"?}`` (every transfer from that peer
fails), ``search_duration {"seconds"}``, ``transfer_duration {"seconds"}``; ``clear`` resets them
with the base faults.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from soulspot_jobs.fakes.catalog import CATALOG, CatalogTrack
from soulspot_jobs.fakes.server import FAULTS_PATH, FakeServer, Request, Response

__all__ = ["PEERS", "FakeSlskd", "Peer"]

#: slskd's answer to a search start overlapping another one.
CONCURRENT_SEARCH_MESSAGE = "Only one concurrent operation is permitted"
#: Enqueue requests slskd handles at once; more answer 429.
MAX_CONCURRENT_ENQUEUES = 2
#: Default reason of a download failed by :meth:`FakeSlskd.fail_downloads`.
DEFAULT_FAILURE = "Transfer failed: the remote peer closed the connection"
#: Fractions of ``transfer_duration`` at which a download enters each state before it completes.
PHASES = (
    (0.0, "Requested"),
    (0.1, "Queued, Remotely"),
    (0.25, "Initializing"),
    (0.35, "InProgress"),
)
#: Size of a FLAC file in percent of the same audio uncompressed (stereo).
FLAC_RATIO_PERCENT = 60
#: Fraction of a file a failed download got before it failed.
FAILED_FRACTION = 0.5


@dataclass(frozen=True)
class Peer:
    """A Soulseek user of the fake network: how it shares every catalog track, how busy it is."""

    username: str
    #: Root of its shared folders as slskd shows it (``@@flac``).
    share: str
    extension: str
    #: kbit/s; ``None`` for the FLAC peers (slskd sends none).
    bit_rate: int | None = None
    bit_depth: int | None = None
    #: Hz.
    sample_rate: int | None = None
    #: Whether the peer's client fills in the extension field (many send it empty).
    declares_extension: bool = True
    has_free_upload_slot: bool = True
    queue_length: int = 0
    #: Bytes per second.
    upload_speed: int = 1_000_000
    #: Files this peer shares only with its buddies: listed as locked, refused to others.
    locked_extension: str | None = None
    #: Non-audio files beside each track (covers, cue sheets).
    extras: tuple[str, ...] = ()


#: The peers sharing every catalog track, in the order they answer a search.
PEERS: tuple[Peer, ...] = (
    Peer(
        "lossless_lover",
        "@@flac",
        "flac",
        bit_depth=16,
        sample_rate=44_100,
        upload_speed=4_000_000,
        extras=("cover.jpg", "album.cue"),
    ),
    Peer("mp3 archive", "@@mp3", "mp3", bit_rate=320, declares_extension=False, queue_length=1),
    Peer("old_rips", "@@rips", "mp3", bit_rate=128, queue_length=3, upload_speed=250_000),
    Peer(
        "slow_peer",
        "@@share",
        "mp3",
        bit_rate=320,
        has_free_upload_slot=False,
        queue_length=37,
        upload_speed=15_000,
        locked_extension="flac",
    ),
)


@dataclass
class _Search:
    id: str
    text: str
    token: int
    started_at: datetime
    #: ``time.monotonic()`` at the start.
    started: float
    duration: float
    responses: list[dict[str, Any]]
    stopped: float | None = None


@dataclass
class _Transfer:
    id: str
    username: str
    filename: str
    size: int
    requested_at: datetime
    started: float
    duration: float
    #: (state, exception) the transfer ends with instead of success.
    failure: tuple[str, str] | None = None
    cancelled: float | None = None


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
        port: int = 0,
    ) -> None:
        super().__init__(port=port)
        self.api_key = api_key
        self.catalog = tuple(catalog)
        #: The peers sharing every track: the first ``peers_per_track`` of ``peers``.
        self.peers = tuple(peers)[:peers_per_track]
        #: Seconds a search runs before it completes.
        self.search_duration = search_duration
        #: Seconds a download takes from ``Requested`` to ``Completed``.
        self.transfer_duration = transfer_duration
        #: Seconds a search start takes (overlapping starts answer 429 meanwhile).
        self.search_start_delay = search_start_delay
        #: Seconds an enqueue request takes (a third one meanwhile answers 429).
        self.enqueue_delay = enqueue_delay
        #: Answer enqueues with an empty 201, as slskd did before it listed enqueued transfers.
        self.legacy_enqueue = legacy_enqueue
        #: Body of every search start accepted, in order.
        self.search_requests: list[dict[str, Any]] = []
        self._state_lock = threading.Lock()
        self._searches: dict[str, _Search] = {}
        self._transfers: dict[str, _Transfer] = {}
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
            ("GET", "/api/v0/searches/{id}", self._get_search),
            ("PUT", "/api/v0/searches/{id}", self._stop_search),
            ("DELETE", "/api/v0/searches/{id}", self._delete_search),
            ("GET", "/api/v0/searches/{id}/responses", self._get_responses),
            ("GET", "/api/v0/transfers/downloads", self._list_downloads),
            ("POST", "/api/v0/transfers/downloads/{username}", self._enqueue),
            ("GET", "/api/v0/transfers/downloads/{username}", self._list_user_downloads),
            ("GET", "/api/v0/transfers/downloads/{username}/{id}", self._get_download),
            ("DELETE", "/api/v0/transfers/downloads/{username}/{id}", self._cancel_download),
        )
        for method, pattern, handler in routes:
            self.route(method, pattern, self._authenticated(handler))

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
                return Response(429, text=CONCURRENT_SEARCH_MESSAGE)
            self._starting += 1
        try:
            if self.search_start_delay:
                time.sleep(self.search_start_delay)
            search = _Search(
                id=search_id,
                text=str(body["searchText"]),
                token=next(self._tokens),
                started_at=datetime.now(UTC),
                started=time.monotonic(),
                duration=self.search_duration,
                responses=self._responses_for(str(body["searchText"])),
            )
            with self._state_lock:
                self._searches[search_id] = search
                self.search_requests.append(body)
        finally:
            with self._state_lock:
                self._starting -= 1
        return Response(200, _search_json(search, time.monotonic(), with_responses=False))

    def _get_search(self, request: Request) -> Response:
        search = self._searches.get(request.params["id"])
        if search is None:
            return Response(404)
        with_responses = request.query.get("includeResponses", "false").lower() == "true"
        return Response(200, _search_json(search, time.monotonic(), with_responses=with_responses))

    def _get_responses(self, request: Request) -> Response:
        search = self._searches.get(request.params["id"])
        if search is None:
            return Response(404)
        return Response(200, _visible_responses(search, time.monotonic()))

    def _stop_search(self, request: Request) -> Response:
        search = self._searches.get(request.params["id"])
        if search is None:
            return Response(404)
        with self._state_lock:
            if search.stopped is None and not _search_complete(search, time.monotonic()):
                search.stopped = time.monotonic()
        return Response(200)

    def _delete_search(self, request: Request) -> Response:
        with self._state_lock:
            removed = self._searches.pop(request.params["id"], None)
        return Response(404) if removed is None else Response(204)

    def _responses_for(self, text: str) -> list[dict[str, Any]]:
        words = _words(text)
        tracks = [
            (number, track)
            for number, track in enumerate(self.catalog, start=1)
            if words and words <= _words(f"{track.artist} {track.album} {track.title}")
        ]
        responses = []
        for peer in self.peers:
            files = [_file_json(peer, track, number, peer.extension) for number, track in tracks]
            extras = [_extra_json(peer, track, name) for _, track in tracks for name in peer.extras]
            locked = []
            if peer.locked_extension:
                locked = [
                    _file_json(peer, track, number, peer.locked_extension, locked=True)
                    for number, track in tracks
                ]
            if files:
                responses.append(_response_json(peer, files + extras, locked, next(self._tokens)))
        return responses

    # -- downloads ---------------------------------------------------------------------------

    def _enqueue(self, request: Request) -> Response:
        username = request.params["username"]
        body = request.json()
        if not isinstance(body, list) or not body:
            return Response(400, text="At least one file is required.")
        with self._state_lock:
            if self._busy_enqueues > 0 or self._enqueuing >= MAX_CONCURRENT_ENQUEUES:
                self._busy_enqueues = max(0, self._busy_enqueues - 1)
                return Response(429)
            self._enqueuing += 1
        try:
            if self.enqueue_delay:
                time.sleep(self.enqueue_delay)
            enqueued, failed = self._enqueue_files(username, body)
        finally:
            with self._state_lock:
                self._enqueuing -= 1
        if self.legacy_enqueue:
            return Response(201)
        return Response(201, {"enqueued": enqueued, "failed": failed})

    def _enqueue_files(
        self, username: str, files: list[Any]
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        shared = self._shared_by(username)
        enqueued, failed = [], []
        for item in files:
            filename = str(item.get("filename") or "") if isinstance(item, dict) else ""
            if filename not in shared:
                failed.append({"filename": filename, "message": "File not shared."})
                continue
            with self._state_lock:
                failure = self._failing_peers.get(username)
                if failure is None and self._failures:
                    failure = self._failures.pop(0)
                transfer = _Transfer(
                    id=str(uuid.uuid4()),
                    username=username,
                    filename=filename,
                    size=shared[filename],
                    requested_at=datetime.now(UTC),
                    started=time.monotonic(),
                    duration=self.transfer_duration,
                    failure=failure,
                )
                self._transfers[transfer.id] = transfer
            enqueued.append(_transfer_json(transfer, time.monotonic()))
        return enqueued, failed

    def _shared_by(self, username: str) -> dict[str, int]:
        """The unlocked audio files ``username`` shares, by file name, with their sizes."""
        for peer in self.peers:
            if peer.username == username:
                files = [
                    _file_json(peer, track, number, peer.extension)
                    for number, track in enumerate(self.catalog, start=1)
                ]
                return {item["filename"]: item["size"] for item in files}
        return {}

    def _list_downloads(self, request: Request) -> Response:
        now = time.monotonic()
        with self._state_lock:
            transfers = list(self._transfers.values())
        users = sorted({transfer.username for transfer in transfers})
        return Response(200, [_user_json(user, transfers, now) for user in users])

    def _list_user_downloads(self, request: Request) -> Response:
        username = request.params["username"]
        with self._state_lock:
            transfers = [t for t in self._transfers.values() if t.username == username]
        if not transfers:
            return Response(404)
        return Response(200, _user_json(username, transfers, time.monotonic()))

    def _get_download(self, request: Request) -> Response:
        transfer = self._transfer(request)
        if transfer is None:
            return Response(404)
        return Response(200, _transfer_json(transfer, time.monotonic()))

    def _cancel_download(self, request: Request) -> Response:
        transfer = self._transfer(request)
        if transfer is None:
            return Response(404)
        now = time.monotonic()
        with self._state_lock:
            if request.query.get("remove", "false").lower() == "true":
                del self._transfers[transfer.id]
            elif transfer.cancelled is None and _fraction(transfer, now) < 1.0:
                transfer.cancelled = now
        return Response(204)

    def _transfer(self, request: Request) -> _Transfer | None:
        transfer = self._transfers.get(request.params["id"])
        if transfer is None or transfer.username != request.params["username"]:
            return None
        return transfer


# -- JSON as slskd writes it -------------------------------------------------------------------


def _failure(state: str, exception: str) -> tuple[str, str]:
    if not state.startswith("Completed,") or "Succeeded" in state:
        raise ValueError(f"a failed transfer's state must be 'Completed, <failure>', not {state!r}")
    return state, exception


def _failure_options(options: dict[str, Any]) -> dict[str, str]:
    return {key: str(options[key]) for key in ("state", "exception") if key in options}


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\w+", text.casefold()))


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _timespan(seconds: float) -> str:
    """A .NET ``TimeSpan`` as slskd serialises it: ``00:00:01.2500000``."""
    whole, ticks = int(seconds), int(seconds % 1 * 10_000_000)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}.{ticks:07d}"


def _path(peer: Peer, track: CatalogTrack, name: str) -> str:
    return f"{peer.share}\\Music\\{track.artist}\\{track.album}\\{name}"


def _file_json(
    peer: Peer, track: CatalogTrack, number: int, extension: str, *, locked: bool = False
) -> dict[str, Any]:
    seconds = track.duration_ms // 1000
    bit_depth, sample_rate = peer.bit_depth or 16, peer.sample_rate or 44_100
    bit_rate = peer.bit_rate or 320
    if extension == "flac":
        bytes_per_second = bit_depth * sample_rate * 2 // 8 * FLAC_RATIO_PERCENT // 100
    else:
        bytes_per_second = bit_rate * 1000 // 8
    data: dict[str, Any] = {
        "filename": _path(peer, track, f"{number:02d} - {track.title}.{extension}"),
        "size": seconds * bytes_per_second + 4096,
        "code": 1,
        "extension": extension if peer.declares_extension else "",
        "length": seconds,
        "isVariableBitRate": False,
        "isLocked": locked,
    }
    if extension == "flac":
        data.update(bitDepth=bit_depth, sampleRate=sample_rate)
    else:
        data["bitRate"] = bit_rate
    return data


def _extra_json(peer: Peer, track: CatalogTrack, name: str) -> dict[str, Any]:
    return {
        "filename": _path(peer, track, name),
        "size": 48_213,
        "code": 1,
        "extension": name.rsplit(".", 1)[-1] if peer.declares_extension else "",
        "isVariableBitRate": False,
        "isLocked": False,
    }


def _response_json(
    peer: Peer, files: list[dict[str, Any]], locked: list[dict[str, Any]], token: int
) -> dict[str, Any]:
    return {
        "username": peer.username,
        "fileCount": len(files),
        "files": files,
        "lockedFileCount": len(locked),
        "lockedFiles": locked,
        "hasFreeUploadSlot": peer.has_free_upload_slot,
        "queueLength": peer.queue_length,
        "uploadSpeed": peer.upload_speed,
        "token": token,
    }


def _search_complete(search: _Search, now: float) -> bool:
    return search.stopped is not None or now - search.started >= search.duration


def _visible_responses(search: _Search, now: float) -> list[dict[str, Any]]:
    """The responses received by ``now``: they arrive evenly while the search runs."""
    end = search.stopped if search.stopped is not None else now
    if end - search.started >= search.duration:
        return list(search.responses)
    arrived = int(len(search.responses) * (end - search.started) / search.duration)
    return search.responses[:arrived]


def _search_json(search: _Search, now: float, *, with_responses: bool) -> dict[str, Any]:
    responses = _visible_responses(search, now)
    complete = _search_complete(search, now)
    if search.stopped is not None:
        state = "Completed, Cancelled"
        ended: float | None = search.stopped
    elif complete:
        state = "Completed, ResponseLimitReached" if responses else "Completed, TimedOut"
        ended = search.started + search.duration
    else:
        state, ended = "InProgress", None
    ended_at = (
        None if ended is None else search.started_at + timedelta(seconds=ended - search.started)
    )
    return {
        "id": search.id,
        "searchText": search.text,
        "state": state,
        "isComplete": complete,
        "fileCount": sum(response["fileCount"] for response in responses),
        "lockedFileCount": sum(response["lockedFileCount"] for response in responses),
        "responseCount": len(responses),
        "startedAt": _iso(search.started_at),
        "endedAt": _iso(ended_at) if ended_at else None,
        "token": search.token,
        "responses": responses if with_responses else [],
    }


def _fraction(transfer: _Transfer, now: float) -> float:
    """How far along its schedule the transfer is, 0 to 1 (frozen when it was cancelled)."""
    end = transfer.cancelled if transfer.cancelled is not None else now
    if transfer.duration <= 0:
        return 1.0
    return min(1.0, max(0.0, (end - transfer.started) / transfer.duration))


def _transfer_json(transfer: _Transfer, now: float) -> dict[str, Any]:
    fraction = _fraction(transfer, now)
    start = PHASES[-1][0]
    state = next(name for at, name in reversed(PHASES) if fraction >= at)
    progress = max(0.0, (fraction - start) / (1.0 - start))
    exception = None
    if transfer.cancelled is not None:
        state, exception = "Completed, Cancelled", "Transfer cancelled"
    elif fraction >= 1.0 and transfer.failure is not None:
        (state, exception), progress = transfer.failure, FAILED_FRACTION
    elif fraction >= 1.0:
        state = "Completed, Succeeded"
    done = state.startswith("Completed")
    transferred = int(transfer.size * progress)

    def moment(at: float) -> str | None:
        if fraction < at:
            return None
        return _iso(transfer.requested_at + timedelta(seconds=at * transfer.duration))

    elapsed = max(0.0, (fraction - start) * transfer.duration)
    speed = transferred / elapsed if elapsed else 0.0
    remaining = transfer.size - transferred
    return {
        "id": transfer.id,
        "username": transfer.username,
        "direction": "Download",
        "filename": transfer.filename,
        "size": transfer.size,
        "startOffset": 0,
        "state": state,
        "requestedAt": _iso(transfer.requested_at),
        "enqueuedAt": moment(PHASES[1][0]),
        "startedAt": moment(start),
        "endedAt": _iso(transfer.requested_at + timedelta(seconds=fraction * transfer.duration))
        if done
        else None,
        "bytesTransferred": transferred,
        "averageSpeed": speed,
        "placeInQueue": 1 if state == "Queued, Remotely" else None,
        "exception": exception,
        "attempts": 1,
        "bytesRemaining": remaining,
        "elapsedTime": _timespan(elapsed) if fraction >= start else None,
        "percentComplete": round(100.0 * transferred / transfer.size, 2) if transfer.size else 0.0,
        "remainingTime": _timespan(remaining / speed) if speed and not done else None,
    }


def _user_json(username: str, transfers: list[_Transfer], now: float) -> dict[str, Any]:
    """One user's downloads grouped by directory, as ``GET /transfers/downloads`` lists them."""
    directories: dict[str, list[dict[str, Any]]] = {}
    for transfer in transfers:
        if transfer.username == username:
            directory = transfer.filename.rsplit("\\", 1)[0]
            directories.setdefault(directory, []).append(_transfer_json(transfer, now))
    return {
        "username": username,
        "directories": [
            {"directory": name, "fileCount": len(files), "files": files}
            for name, files in directories.items()
        ],
    }
