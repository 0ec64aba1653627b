"""The fake Soulseek network behind the fake slskd: its peers, and searches, transfers and
batches as they unfold over time, written as slskd's JSON (camelCase, ISO times, .NET time
spans, comma-joined states, null fields left out), and the server connection's state.

Nothing here runs on a clock of its own: every state is computed from ``time.monotonic()`` at
the moment a request reads it. A transfer or search that slskd ended from outside its schedule
(cancelled, or found unfinished when slskd started again) keeps the moment it was ended, and
reads as it was then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from soulspot_jobs.fakes.catalog import CatalogTrack

__all__ = [
    "FAILED_FRACTION",
    "PEERS",
    "PHASES",
    "REJECTED_AT",
    "SHUT_DOWN",
    "BatchRecord",
    "Peer",
    "SearchRecord",
    "TransferRecord",
    "batch_json",
    "extra_json",
    "file_json",
    "iso",
    "response_json",
    "schedule_fraction",
    "search_complete",
    "search_ended",
    "search_json",
    "server_json",
    "stored_responses",
    "timespan",
    "transfer_done",
    "transfer_json",
    "transfer_state",
    "user_json",
]

#: Fractions of ``transfer_duration`` at which a download enters each state before it completes.
PHASES = (
    (0.0, "Queued, Locally"),
    (0.05, "Requested"),
    (0.1, "Queued, Remotely"),
    (0.25, "Initializing"),
    (0.35, "InProgress"),
)
#: Fraction of ``transfer_duration`` at which a peer rejects a file it does not share.
REJECTED_AT = PHASES[2][0]
#: Size of a FLAC file in percent of the same audio uncompressed (stereo).
FLAC_RATIO_PERCENT = 60
#: Fraction of a file a failed download got before it failed.
FAILED_FRACTION = 0.5
#: State and exception slskd gives, when it starts, every transfer it finds unfinished
#: (``Application.cs``: the previous run ended while they ran).
SHUT_DOWN = ("Completed, Errored", "Application shut down")
#: The Soulseek server slskd connects to by default (``Options.cs``), and its address.
SERVER_ADDRESS = "vps.slsknet.org"
SERVER_ENDPOINT = "208.76.170.59:2271"


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
class SearchRecord:
    """One search the fake slskd runs."""

    id: str
    text: str
    token: int
    started_at: datetime
    #: ``time.monotonic()`` at the start.
    started: float
    duration: float
    responses: list[dict[str, Any]]
    #: Seconds between the search reading ``Completed`` and its responses being stored.
    finalize_delay: float = 0.0
    stopped: float | None = None
    #: (``time.monotonic()``, state) when slskd ended it outside Soulseek: starting it failed
    #: (``Completed, Errored``), or slskd started again while it ran (``Completed, TimedOut``).
    #: Its counts then read 0 and it has no responses.
    aborted: tuple[float, str] | None = None


@dataclass
class TransferRecord:
    """One download the fake slskd runs."""

    id: str
    username: str
    filename: str
    size: int
    requested_at: datetime
    started: float
    duration: float
    #: (state, exception) the transfer ends with instead of success.
    failure: tuple[str, str] | None = None
    #: Fraction of ``duration`` at which the failure happens.
    failure_at: float = 1.0
    #: Uploads ahead of ours at the peer while it is ``Queued, Remotely``.
    place_in_queue: int = 1
    cancelled: float | None = None
    #: ``time.monotonic()`` when slskd stopped while it ran: it ends as :data:`SHUT_DOWN`.
    shut_down: float | None = None
    #: Hidden from slskd's lists (soft delete, or superseded by a new enqueue of the file).
    removed: bool = False
    #: The batch it was enqueued in (``POST .../downloads/batches``), if any.
    batch_id: str | None = None


@dataclass
class BatchRecord:
    """One batch of downloads enqueued through ``POST /api/v0/transfers/downloads/batches``."""

    id: str
    username: str
    created_at: datetime
    search_id: str | None = None
    #: Directory the batch's files go to, relative to slskd's downloads directory.
    destination: str | None = None
    #: Ids of the transfers enqueued in it, in order.
    transfer_ids: list[str] = field(default_factory=list)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def timespan(seconds: float) -> str:
    """A .NET ``TimeSpan`` as slskd serialises it: ``00:00:01.2500000``."""
    whole, ticks = int(seconds), int(seconds % 1 * 10_000_000)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}.{ticks:07d}"


def _path(peer: Peer, track: CatalogTrack, name: str) -> str:
    return f"{peer.share}\\Music\\{track.artist}\\{track.album}\\{name}"


def file_json(
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


def extra_json(peer: Peer, track: CatalogTrack, name: str) -> dict[str, Any]:
    return {
        "filename": _path(peer, track, name),
        "size": 48_213,
        "code": 1,
        "extension": name.rsplit(".", 1)[-1] if peer.declares_extension else "",
        "isVariableBitRate": False,
        "isLocked": False,
    }


def response_json(
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


def search_complete(search: SearchRecord, now: float) -> bool:
    """The search reads ``Completed`` (its responses may not be stored yet)."""
    if search.aborted is not None or search.stopped is not None:
        return True
    return now - search.started >= search.duration


def _search_end(search: SearchRecord) -> float:
    """When the search stopped receiving responses (``time.monotonic()``)."""
    if search.aborted is not None:
        return search.aborted[0]
    return search.stopped if search.stopped is not None else search.started + search.duration


def search_ended(search: SearchRecord, now: float) -> bool:
    """slskd stored the responses and ``endedAt``: ``finalize_delay`` after completing (at
    once when slskd ended it itself)."""
    if search.aborted is not None:
        return True
    return search_complete(search, now) and now >= _search_end(search) + search.finalize_delay


def _arrived_responses(search: SearchRecord, now: float) -> list[dict[str, Any]]:
    """The responses received by ``now``: they arrive evenly while the search runs."""
    if search.aborted is not None:
        return []
    if search.duration <= 0 or (search.stopped is None and search_complete(search, now)):
        return list(search.responses)
    end = min(now, _search_end(search))
    arrived = int(len(search.responses) * max(0.0, end - search.started) / search.duration)
    return search.responses[:arrived]


def stored_responses(search: SearchRecord, now: float) -> list[dict[str, Any]]:
    """What ``GET .../responses`` answers: nothing until slskd stored them at the end."""
    return _arrived_responses(search, now) if search_ended(search, now) else []


def search_json(search: SearchRecord, now: float, *, with_responses: bool) -> dict[str, Any]:
    arrived = _arrived_responses(search, now)
    if search.aborted is not None:
        state = search.aborted[1]
    elif search.stopped is not None:
        state = "Completed, Cancelled"
    elif search_complete(search, now):
        state = "Completed, ResponseLimitReached" if arrived else "Completed, TimedOut"
    else:
        state = "InProgress"
    data: dict[str, Any] = {
        "id": search.id,
        "searchText": search.text,
        "state": state,
        "isComplete": search_complete(search, now),
        "fileCount": sum(response["fileCount"] for response in arrived),
        "lockedFileCount": sum(response["lockedFileCount"] for response in arrived),
        "responseCount": len(arrived),
        "startedAt": iso(search.started_at),
        "token": search.token,
        "responses": stored_responses(search, now) if with_responses else [],
    }
    if search_ended(search, now):
        ended = _search_end(search)
        if search.aborted is None:
            ended += search.finalize_delay
        data["endedAt"] = iso(search.started_at + timedelta(seconds=ended - search.started))
    return data


def _stopped_at(transfer: TransferRecord) -> float | None:
    """When slskd ended the transfer from outside its schedule (cancelled, shut down), if so."""
    moments = [at for at in (transfer.cancelled, transfer.shut_down) if at is not None]
    return min(moments) if moments else None


def schedule_fraction(transfer: TransferRecord, now: float) -> float:
    """How far along its schedule the transfer is, 0 to 1: frozen where it ended, when it was
    cancelled, shut down or failed early."""
    stopped = _stopped_at(transfer)
    end = stopped if stopped is not None else now
    if transfer.duration <= 0:
        fraction = 1.0
    else:
        fraction = min(1.0, max(0.0, (end - transfer.started) / transfer.duration))
    if transfer.failure is not None:
        fraction = min(fraction, transfer.failure_at)
    return fraction


def transfer_state(transfer: TransferRecord, now: float) -> tuple[str, str | None, float]:
    """The transfer's state, slskd's exception (when it failed) and the fraction of its bytes
    transferred, at ``now``."""
    fraction = schedule_fraction(transfer, now)
    start = PHASES[-1][0]
    progress = max(0.0, (fraction - start) / (1.0 - start))
    stopped = _stopped_at(transfer)
    if stopped is not None:
        if stopped == transfer.cancelled:
            return "Completed, Cancelled", "Transfer cancelled", progress
        return *SHUT_DOWN, progress
    if transfer.failure is not None and fraction >= transfer.failure_at:
        state, exception = transfer.failure
        return state, exception, FAILED_FRACTION if transfer.failure_at >= 1.0 else 0.0
    if fraction >= 1.0:
        return "Completed, Succeeded", None, 1.0
    return next(name for at, name in reversed(PHASES) if fraction >= at), None, progress


def transfer_done(transfer: TransferRecord, now: float) -> bool:
    """The transfer's state holds ``Completed`` (succeeded or not)."""
    return transfer_state(transfer, now)[0].startswith("Completed")


def transfer_json(transfer: TransferRecord, now: float) -> dict[str, Any]:
    """The transfer as slskd writes it (``Transfers/Types/Transfer.cs``): fields that are null
    (no batch, not yet started or ended, no exception, no place in the queue, no speed yet)
    are left out; ``removed`` is always there."""
    fraction = schedule_fraction(transfer, now)
    start = PHASES[-1][0]
    state, exception, progress = transfer_state(transfer, now)
    done = state.startswith("Completed")
    transferred = int(transfer.size * progress)

    def moment(at: float) -> str | None:
        if fraction < at:
            return None
        return iso(transfer.requested_at + timedelta(seconds=at * transfer.duration))

    elapsed = max(0.0, (fraction - start) * transfer.duration)
    speed = transferred / elapsed if elapsed else 0.0
    remaining = transfer.size - transferred
    data = {
        "batchId": transfer.batch_id,
        "id": transfer.id,
        "username": transfer.username,
        "direction": "Download",
        "filename": transfer.filename,
        "size": transfer.size,
        "state": state,
        "requestedAt": iso(transfer.requested_at),
        "enqueuedAt": moment(PHASES[2][0]),
        "startedAt": moment(start),
        "endedAt": iso(transfer.requested_at + timedelta(seconds=fraction * transfer.duration))
        if done
        else None,
        "bytesTransferred": transferred,
        "averageSpeed": speed,
        "placeInQueue": transfer.place_in_queue if state == "Queued, Remotely" else None,
        "exception": exception,
        # slskd counts the first attempt once the download leaves its local queue
        "attempts": 0 if fraction < PHASES[1][0] else 1,
        "removed": transfer.removed,
        "bytesRemaining": remaining,
        "elapsedTime": timespan(elapsed) if fraction >= start else None,
        "percentComplete": round(100.0 * transferred / transfer.size, 2) if transfer.size else 0.0,
        # null only while the speed is 0 (``Transfer.RemainingTime``), so 0 once succeeded
        "remainingTime": timespan(remaining / speed) if speed else None,
    }
    return {key: value for key, value in data.items() if value is not None}


def user_json(username: str, transfers: list[TransferRecord], now: float) -> dict[str, Any]:
    """One user's downloads grouped by directory, as ``GET /transfers/downloads`` lists them."""
    directories: dict[str, list[dict[str, Any]]] = {}
    for transfer in transfers:
        if transfer.username == username:
            directory = transfer.filename.rsplit("\\", 1)[0]
            directories.setdefault(directory, []).append(transfer_json(transfer, now))
    return {
        "username": username,
        "directories": [
            {"directory": name, "fileCount": len(files), "files": files}
            for name, files in directories.items()
        ],
    }


def batch_json(batch: BatchRecord, transfers: list[TransferRecord], now: float) -> dict[str, Any]:
    """The batch as slskd writes it (``Transfers/Types/Batch.cs``), with its transfers (removed
    ones too: slskd includes every transfer of the batch). Only the destination of the
    request's options is kept, as slskd's controller does."""
    data = {
        "searchId": batch.search_id,
        "id": batch.id,
        "username": batch.username,
        "direction": "Download",
        "createdAt": iso(batch.created_at),
        "transfers": [transfer_json(transfer, now) for transfer in transfers],
        "options": {} if batch.destination is None else {"destination": batch.destination},
    }
    return {key: value for key, value in data.items() if value is not None}


def server_json(state: str) -> dict[str, Any]:
    """``GET /api/v0/server`` in ``state`` (``"Connected, LoggedIn"``, ``"Connected"``,
    ``"Disconnected"``): slskd's ``ServerState`` (``Core/State.cs``), which names no user;
    address and endpoint are null (left out) while disconnected."""
    flags = {flag.strip() for flag in state.split(",")}
    connected = "Connected" in flags
    data = {
        "address": SERVER_ADDRESS if connected else None,
        "ipEndPoint": SERVER_ENDPOINT if connected else None,
        "state": state,
        "isConnected": connected,
        "isConnecting": "Connecting" in flags,
        "isLoggedIn": "LoggedIn" in flags,
        "isLoggingIn": "LoggingIn" in flags,
        "isTransitioning": bool(flags & {"Connecting", "Disconnecting", "LoggingIn"}),
    }
    return {key: value for key, value in data.items() if value is not None}
