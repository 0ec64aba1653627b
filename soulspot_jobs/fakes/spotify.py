"""A fake Spotify: the accounts service (client-credentials tokens) and the Web API endpoints
the client uses, on one loopback port.

Point both ``SPOTIFY_ACCOUNTS_URL`` and ``SPOTIFY_API_URL`` at :attr:`FakeSpotify.url`. Answers
have the real shapes: ``400 {"error": "invalid_client", ...}`` for bad credentials,
``401 {"error": {"status": 401, "message": ...}}`` for a missing, unknown or expired token,
paging objects whose ``next`` is an absolute URL, ``404`` for unknown ids; the base fault
``rate_limit`` gives the 429 with ``Retry-After`` of the real rolling-window limit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import string
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from soulspot_jobs.fakes.catalog import CATALOG, MIXTAPE, CatalogTrack
from soulspot_jobs.fakes.server import FakeServer, Request, Response

#: The playlist every fake Spotify has: the whole catalog.
DEMO_PLAYLIST = "soulspot-demo"
#: Credentials the fake accepts unless told otherwise.
DEFAULT_CLIENT_ID = "soulspot-client"
DEFAULT_CLIENT_SECRET = "soulspot-secret"
#: Items per playlist page when the request gives no ``limit``, and the most it may ask for.
DEFAULT_LIMIT = MAX_LIMIT = 100

_BASE62 = string.digits + string.ascii_letters

#: The playlist of the :data:`MIXTAPE` tracks a fake's catalog holds (listed when it holds any).
MIXTAPE_PLAYLIST = "0SoulspotDemoMixtape50"


@dataclass(frozen=True)
class LocalFile:
    """A local file added to a playlist in the Spotify app: listed with ``is_local: true``."""

    artist: str
    title: str
    album: str = ""
    duration_ms: int = 0


#: What a playlist item may be: a catalog track, a local file, or ``None`` for a track that
#: is no longer available (the API lists it with ``track: null``).
PlaylistEntry = CatalogTrack | LocalFile | None


def _error(status: int, message: str) -> Response:
    return Response(status, {"error": {"status": status, "message": message}})


def _unauthorized(message: str) -> Response:
    challenge = f'Bearer realm="spotify", error="invalid_token", error_description="{message}"'
    response = _error(401, message)
    response.headers["WWW-Authenticate"] = challenge
    return response


def _spotify_id(*parts: str) -> str:
    """A stable 22-character base62 id derived from ``parts`` (for artists and albums)."""
    number = int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:17], "big")
    chars = []
    for _ in range(22):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(chars)


class FakeSpotify(FakeServer):
    """Fake accounts service and Web API; knows :data:`CATALOG` and the playlist ``soulspot-demo``.

    ``expires_in`` (seconds) is what token answers announce; ``token_lifetime`` is how long the
    fake really honours a token (defaults to ``expires_in``; set it lower to have tokens
    refused before the client expects it, as after a revocation).
    """

    def __init__(
        self,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        expires_in: int = 3600,
        token_lifetime: float | None = None,
        catalog: Iterable[CatalogTrack] = CATALOG,
        port: int = 0,
    ) -> None:
        super().__init__(port=port)
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.token_lifetime = expires_in if token_lifetime is None else token_lifetime
        #: Requests to ``POST /api/token``, answered or refused.
        self.token_requests = 0
        #: Every token issued, oldest first (tests check none leaks into a message).
        self.issued_tokens: list[str] = []
        self._state_lock = threading.Lock()
        self._tokens: dict[str, float] = {}
        self._expired: set[str] = set()
        self._tracks: dict[str, CatalogTrack] = {}
        self._playlists: dict[str, list[tuple[str, PlaylistEntry]]] = {}
        self.catalog = tuple(catalog)
        self.add_playlist(DEMO_PLAYLIST, list(self.catalog))
        mixtape = [track for track in self.catalog if track in MIXTAPE]
        if mixtape:
            self.add_playlist(MIXTAPE_PLAYLIST, mixtape)
        self.route("POST", "/api/token", self._token)
        self.route("GET", "/v1/playlists/{playlist_id}/tracks", self._playlist_items)
        self.route("GET", "/v1/playlists/{playlist_id}/items", self._playlist_items)
        self.route("GET", "/v1/tracks/{track_id}", self._track)

    # -- controls ---------------------------------------------------------------------------

    def add_playlist(
        self,
        playlist_id: str,
        tracks: Sequence[PlaylistEntry] | None = None,
        *,
        size: int | None = None,
    ) -> None:
        """Create (or replace) a playlist of ``tracks`` (default: the catalog).

        With ``size``, the playlist has that many items cycling through ``tracks``; repeats get
        ids of their own, so every item of a large playlist is a distinct track.
        """
        entries: list[PlaylistEntry] = list(self.catalog if tracks is None else tracks)
        if size is not None:
            if not entries:
                raise ValueError("a sized playlist needs at least one track to cycle through")
            entries = [
                self._copy(entries[i % len(entries)], i // len(entries)) for i in range(size)
            ]
        added_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._state_lock:
            for entry in entries:
                if isinstance(entry, CatalogTrack):
                    self._tracks.setdefault(entry.spotify_id, entry)
            self._playlists[playlist_id] = [(added_at, entry) for entry in entries]

    def expire_tokens(self) -> None:
        """Every token issued so far is now expired (answered 401 "The access token expired")."""
        with self._state_lock:
            self._expired.update(self._tokens)
            self._tokens.clear()

    # -- handlers ---------------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        with self._state_lock:
            self.token_requests += 1
        form = {k: v[-1] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        if not self._valid_client(request.headers.get("authorization", "")):
            return Response(400, {"error": "invalid_client", "error_description": "Invalid client"})
        if form.get("grant_type") != "client_credentials":
            return Response(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant_type parameter is missing",
                },
            )
        token = secrets.token_urlsafe(48)
        with self._state_lock:
            self._tokens[token] = time.monotonic() + self.token_lifetime
            self.issued_tokens.append(token)
        return Response(
            200, {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        )

    def _playlist_items(self, request: Request) -> Response:
        refused = self._check_token(request)
        if refused is not None:
            return refused
        with self._state_lock:
            items = self._playlists.get(request.params["playlist_id"])
        if items is None:
            return _error(404, "Resource not found")
        try:
            limit = int(request.query.get("limit", DEFAULT_LIMIT))
            offset = int(request.query.get("offset", 0))
        except ValueError:
            return _error(400, "Invalid limit")
        if not 1 <= limit <= MAX_LIMIT:
            return _error(400, "Invalid limit")
        if offset < 0:
            return _error(400, "Invalid offset")
        return Response(200, self._paging(request.path, items, limit, offset))

    def _track(self, request: Request) -> Response:
        refused = self._check_token(request)
        if refused is not None:
            return refused
        with self._state_lock:
            track = self._tracks.get(request.params["track_id"])
        if track is None:
            return _error(404, "Resource not found")
        return Response(200, self._track_object(track))

    # -- internals --------------------------------------------------------------------------

    def _valid_client(self, authorization: str) -> bool:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        client_id, _, client_secret = decoded.partition(":")
        return secrets.compare_digest(client_id, self.client_id) and secrets.compare_digest(
            client_secret, self.client_secret
        )

    def _check_token(self, request: Request) -> Response | None:
        """The 401 answer for a missing, unknown or expired bearer token; ``None`` if valid."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _unauthorized("No token provided")
        with self._state_lock:
            expires_at = self._tokens.get(token)
            if expires_at is not None and time.monotonic() >= expires_at:
                del self._tokens[token]
                self._expired.add(token)
                expires_at = None
            expired = token in self._expired
        if expires_at is not None:
            return None
        return _unauthorized("The access token expired" if expired else "Invalid access token")

    def _copy(self, entry: PlaylistEntry, round_: int) -> PlaylistEntry:
        """``entry`` itself in the first round through a sized playlist, later a distinct copy."""
        if round_ == 0 or not isinstance(entry, CatalogTrack):
            return entry
        new_id = _spotify_id(entry.spotify_id, str(round_))
        return CatalogTrack(
            entry.artist,
            entry.title,
            entry.album,
            entry.duration_ms,
            entry.isrc,
            new_id,
            entry.mbid,
            entry.release_mbid,
            entry.release_date,
        )

    def _paging(
        self, path: str, items: list[tuple[str, PlaylistEntry]], limit: int, offset: int
    ) -> dict[str, Any]:
        total = len(items)
        page = items[offset : offset + limit]

        def href(at: int) -> str:
            return f"{self.url}{path}?offset={at}&limit={limit}"

        return {
            "href": href(offset),
            "items": [self._item(added_at, entry) for added_at, entry in page],
            "limit": limit,
            "next": href(offset + limit) if offset + limit < total else None,
            "offset": offset,
            "previous": href(max(offset - limit, 0)) if offset > 0 else None,
            "total": total,
        }

    def _item(self, added_at: str, entry: PlaylistEntry) -> dict[str, Any]:
        if entry is None:
            track = None
        elif isinstance(entry, LocalFile):
            track = self._local_object(entry)
        else:
            track = self._track_object(entry)
        return {
            "added_at": added_at,
            "added_by": {"id": "soulspot", "type": "user", "uri": "spotify:user:soulspot"},
            "is_local": isinstance(entry, LocalFile),
            "primary_color": None,
            "track": track,
            "video_thumbnail": {"url": None},
        }

    def _artist_object(self, name: str) -> dict[str, Any]:
        artist_id = _spotify_id("artist", name)
        return {
            "external_urls": {"spotify": f"https://open.spotify.com/artist/{artist_id}"},
            "href": f"{self.url}/v1/artists/{artist_id}",
            "id": artist_id,
            "name": name,
            "type": "artist",
            "uri": f"spotify:artist:{artist_id}",
        }

    def _track_object(self, track: CatalogTrack) -> dict[str, Any]:
        album_id = _spotify_id("album", track.artist, track.album)
        artists = [self._artist_object(track.artist)]
        return {
            "album": {
                "album_type": "album",
                "artists": artists,
                "external_urls": {"spotify": f"https://open.spotify.com/album/{album_id}"},
                "href": f"{self.url}/v1/albums/{album_id}",
                "id": album_id,
                "images": [],
                "name": track.album,
                "release_date": track.release_date,
                "release_date_precision": "day",
                "total_tracks": 10,
                "type": "album",
                "uri": f"spotify:album:{album_id}",
            },
            "artists": artists,
            "disc_number": 1,
            "duration_ms": track.duration_ms,
            "explicit": False,
            "external_ids": {"isrc": track.isrc},
            "external_urls": {"spotify": f"https://open.spotify.com/track/{track.spotify_id}"},
            "href": f"{self.url}/v1/tracks/{track.spotify_id}",
            "id": track.spotify_id,
            "is_local": False,
            "name": track.title,
            "popularity": 50,
            "preview_url": None,
            "track_number": 1,
            "type": "track",
            "uri": f"spotify:track:{track.spotify_id}",
        }

    @staticmethod
    def _local_object(local: LocalFile) -> dict[str, Any]:
        seconds = local.duration_ms // 1000
        return {
            "album": {"album_type": None, "artists": [], "id": None, "name": local.album},
            "artists": [{"id": None, "name": local.artist, "type": "artist", "uri": None}],
            "disc_number": 0,
            "duration_ms": local.duration_ms,
            "explicit": False,
            "external_ids": {},
            "external_urls": {},
            "href": None,
            "id": None,
            "is_local": True,
            "name": local.title,
            "popularity": 0,
            "preview_url": None,
            "track_number": 0,
            "type": "track",
            "uri": f"spotify:local:{local.artist}:{local.album}:{local.title}:{seconds}",
        }
