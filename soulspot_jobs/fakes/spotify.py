"""A fake Spotify: the accounts service (app and user tokens) and the Web API endpoints the client
uses, on one loopback port.

Point both ``SPOTIFY_ACCOUNTS_URL`` and ``SPOTIFY_API_URL`` at :attr:`FakeSpotify.url`. Answers
have the real shapes (Spotify's OpenAPI definition):

* ``POST /api/token`` with HTTP Basic client credentials: ``grant_type=client_credentials``
  gives an app token; ``grant_type=refresh_token`` with a user's refresh token (see
  :meth:`FakeSpotify.add_user`) gives that user's token, and with ``rotate_refresh_tokens`` a new
  refresh token that replaces the old one. Refusals: ``400 {"error": "invalid_client" |
  "unsupported_grant_type" | "invalid_grant", "error_description": ...}``.
* ``GET /v1/playlists/{id}/items`` (at most 50 entries a page, 20 by default): paging objects
  whose entries hold their track or episode under ``item`` (the deprecated ``track`` only with
  ``legacy_track_field``), local files (``is_local``) and ``null`` entries, ``next`` an absolute
  URL keeping the request's other parameters. A playlist with an ``owner`` is served only to that
  user's token: an app token, or another user's, gets 403. The deprecated
  ``GET /v1/playlists/{id}/tracks`` (at most 100 a page) has the entries under ``track``.
* ``GET /v1/playlists/{id}`` (name and owner) and ``GET /v1/tracks/{id}``.
* Errors are ``{"error": {"status", "message"}}``: 401 for a missing, unknown or expired token
  (with the bearer challenge), 403, 404 for unknown ids, 400 for a bad limit; the base fault
  ``rate_limit`` gives the 429 with ``Retry-After`` of the real rolling-window limit.

Controls besides the base faults, from Python or as ``POST /_faults/<name>``: ``expire_tokens
{}`` (every token issued so far is expired), ``token_lifetime {"seconds"}`` (how long new tokens
are honoured), ``rotate_refresh_tokens {"enabled"}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

from soulspot_jobs.fakes.catalog import CATALOG, MIXTAPE, CatalogTrack
from soulspot_jobs.fakes.server import FAULTS_PATH, FakeServer, Request, Response

#: The playlist every fake Spotify has: the whole catalog. A valid Spotify id (22 base-62
#: characters), so that real clients such as spotipy accept it.
DEMO_PLAYLIST = "5oulSpotDem0P1ayl1st22"
#: Credentials the fake accepts unless told otherwise.
DEFAULT_CLIENT_ID = "soulspot-client"
DEFAULT_CLIENT_SECRET = "soulspot-secret"
#: Entries per playlist page when the request gives no ``limit``.
DEFAULT_LIMIT = 20
#: The most entries a page may ask for: ``/items`` and the deprecated ``/tracks``.
MAX_ITEMS_LIMIT, MAX_TRACKS_LIMIT = 50, 100
#: The user every fake Spotify knows (see :meth:`FakeSpotify.add_user`).
DEFAULT_USER = "soulspot-user"

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


@dataclass(frozen=True)
class Episode:
    """A podcast episode added to a playlist: listed with ``type: "episode"``."""

    show: str
    title: str
    duration_ms: int = 1_800_000


#: What a playlist entry may be: a catalog track, an episode, a local file, or ``None`` for a
#: track that is no longer available (the API lists its object as ``null``).
PlaylistEntry = CatalogTrack | Episode | LocalFile | None


@dataclass
class _Playlist:
    name: str
    #: The user whose token may read the entries; ``None``: any token may.
    owner: str | None
    entries: list[tuple[str, PlaylistEntry]]


def _error(status: int, message: str) -> Response:
    return Response(status, {"error": {"status": status, "message": message}})


def _oauth_error(error: str, description: str) -> Response:
    """A refusal of the accounts service, in OAuth's shape (not the Web API's)."""
    return Response(400, {"error": error, "error_description": description})


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
    """Fake accounts service and Web API; knows :data:`CATALOG`, the playlist
    :data:`DEMO_PLAYLIST` and the user :data:`DEFAULT_USER` (whose refresh token is
    :attr:`refresh_token`).

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
        #: Answer each refresh grant with a new refresh token, and refuse the old one after.
        self.rotate_refresh_tokens = False
        #: Also list each ``/items`` entry's object under the deprecated ``track``.
        self.legacy_track_field = False
        #: Requests to ``POST /api/token``, answered or refused.
        self.token_requests = 0
        #: Every access and refresh token issued, oldest first (tests check none leaks).
        self.issued_tokens: list[str] = []
        self._state_lock = threading.Lock()
        #: Access token -> (when it expires, the user it acts for or None for the app).
        self._tokens: dict[str, tuple[float, str | None]] = {}
        self._expired: set[str] = set()
        #: Refresh token -> user id.
        self._refresh_tokens: dict[str, str] = {}
        self._tracks: dict[str, CatalogTrack] = {}
        self._playlists: dict[str, _Playlist] = {}
        self.catalog = tuple(catalog)
        #: The refresh token of :data:`DEFAULT_USER`, as an authorization-code flow gives it.
        self.refresh_token = self.add_user(DEFAULT_USER)
        self.add_playlist(DEMO_PLAYLIST, list(self.catalog))
        mixtape = [track for track in self.catalog if track in MIXTAPE]
        if mixtape:
            self.add_playlist(MIXTAPE_PLAYLIST, mixtape)
        self.route("POST", "/api/token", self._token)
        self.route("GET", "/v1/playlists/{playlist_id}", self._playlist)
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
        owner: str | None = None,
        name: str | None = None,
    ) -> None:
        """Create (or replace) a playlist of ``tracks`` (default: the catalog).

        With ``size``, the playlist has that many items cycling through ``tracks``; repeats get
        ids of their own, so every item of a large playlist is a distinct track. With ``owner``
        (a user id), only that user's token may read its entries: an app token gets 403.
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
            self._playlists[playlist_id] = _Playlist(
                name or f"Playlist {playlist_id}", owner, [(added_at, e) for e in entries]
            )

    def add_user(self, user_id: str) -> str:
        """Know the user ``user_id``; returns a refresh token for that user (as the
        authorization-code flow would have given the app)."""
        refresh = secrets.token_urlsafe(48)
        with self._state_lock:
            self._refresh_tokens[refresh] = user_id
            self.issued_tokens.append(refresh)
        return refresh

    def expire_tokens(self) -> None:
        """Every token issued so far is now expired (answered 401 "The access token expired")."""
        with self._state_lock:
            self._expired.update(self._tokens)
            self._tokens.clear()

    def error_body(self, status: int, message: str) -> Any:
        """Spotify's error object, also for the base faults' answers (429, 5xx)."""
        return {"error": {"status": status, "message": message}}

    def _control(self, request: Request) -> Response:
        controls: dict[str, Callable[[dict[str, Any]], None]] = {
            "expire_tokens": lambda _: self.expire_tokens(),
            "token_lifetime": lambda o: setattr(self, "token_lifetime", float(o["seconds"])),
            "rotate_refresh_tokens": lambda o: setattr(
                self, "rotate_refresh_tokens", bool(o["enabled"])
            ),
        }
        control = controls.get(request.path[len(FAULTS_PATH) :])
        if control is None:
            return super()._control(request)
        try:
            control(request.json() or {})
        except (KeyError, TypeError, ValueError) as exc:
            return Response(400, {"error": f"bad control options: {exc}"})
        return Response(204)

    # -- handlers ---------------------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        with self._state_lock:
            self.token_requests += 1
        form = {k: v[-1] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        if not self._valid_client(request.headers.get("authorization", "")):
            return _oauth_error("invalid_client", "Invalid client")
        grant = form.get("grant_type")
        if grant == "client_credentials":
            return self._issue(None)
        if grant == "refresh_token":
            return self._refresh(form.get("refresh_token", ""))
        if not grant:
            return _oauth_error("unsupported_grant_type", "grant_type parameter is missing")
        return _oauth_error("unsupported_grant_type", f"grant_type {grant} is not supported")

    def _refresh(self, refresh: str) -> Response:
        with self._state_lock:
            user = self._refresh_tokens.get(refresh)
            if user is None:
                return _oauth_error("invalid_grant", "Invalid refresh token")
            rotated = None
            if self.rotate_refresh_tokens:
                del self._refresh_tokens[refresh]
                rotated = secrets.token_urlsafe(48)
                self._refresh_tokens[rotated] = user
                self.issued_tokens.append(rotated)
        answer = self._issue(user)
        answer.body["scope"] = "playlist-read-private playlist-read-collaborative"
        if rotated is not None:
            answer.body["refresh_token"] = rotated
        return answer

    def _issue(self, user: str | None) -> Response:
        token = secrets.token_urlsafe(48)
        with self._state_lock:
            self._tokens[token] = (time.monotonic() + self.token_lifetime, user)
            self.issued_tokens.append(token)
        return Response(
            200, {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        )

    def _playlist(self, request: Request) -> Response:
        """``GET /v1/playlists/{id}``: the playlist object with a reference to its entries."""
        user = self._check_token(request)
        if isinstance(user, Response):
            return user
        playlist_id = request.params["playlist_id"]
        with self._state_lock:
            playlist = self._playlists.get(playlist_id)
        if playlist is None:
            return _error(404, "Resource not found")
        owner = playlist.owner or "spotify"
        items_ref = {
            "href": f"{self.url}/v1/playlists/{playlist_id}/items",
            "total": len(playlist.entries),
        }
        return Response(
            200,
            {
                "collaborative": False,
                "description": "",
                "external_urls": {"spotify": f"https://open.spotify.com/playlist/{playlist_id}"},
                "href": f"{self.url}/v1/playlists/{playlist_id}",
                "id": playlist_id,
                "images": [],
                "items": items_ref,
                "name": playlist.name,
                "owner": {
                    "display_name": owner,
                    "id": owner,
                    "type": "user",
                    "uri": f"spotify:user:{owner}",
                },
                "public": True,
                "snapshot_id": _spotify_id("snapshot", playlist_id),
                "type": "playlist",
                "uri": f"spotify:playlist:{playlist_id}",
            },
        )

    def _playlist_items(self, request: Request) -> Response:
        user = self._check_token(request)
        if isinstance(user, Response):
            return user
        with self._state_lock:
            playlist = self._playlists.get(request.params["playlist_id"])
        if playlist is None:
            return _error(404, "Resource not found")
        legacy = request.path.endswith("/tracks")
        if not legacy and playlist.owner is not None and user != playlist.owner:
            return _error(403, "Forbidden")
        try:
            limit = int(request.query.get("limit", DEFAULT_LIMIT))
            offset = int(request.query.get("offset", 0))
        except ValueError:
            return _error(400, "Invalid limit")
        if not 1 <= limit <= (MAX_TRACKS_LIMIT if legacy else MAX_ITEMS_LIMIT):
            return _error(400, "Invalid limit")
        if offset < 0:
            return _error(400, "Invalid offset")
        if legacy:
            fields: tuple[str, ...] = ("track",)
        else:
            fields = ("item", "track") if self.legacy_track_field else ("item",)
        return Response(200, self._paging(request, playlist.entries, limit, offset, fields))

    def _track(self, request: Request) -> Response:
        user = self._check_token(request)
        if isinstance(user, Response):
            return user
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

    def _check_token(self, request: Request) -> str | None | Response:
        """The user the bearer token acts for (``None``: the app), or the 401 answer for a
        missing, unknown or expired token."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _unauthorized("No token provided")
        with self._state_lock:
            known = self._tokens.get(token)
            if known is not None and time.monotonic() >= known[0]:
                del self._tokens[token]
                self._expired.add(token)
                known = None
            expired = token in self._expired
        if known is not None:
            return known[1]
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
        self,
        request: Request,
        items: list[tuple[str, PlaylistEntry]],
        limit: int,
        offset: int,
        fields: tuple[str, ...],
    ) -> dict[str, Any]:
        total = len(items)
        page = items[offset : offset + limit]
        others = {k: v for k, v in request.query.items() if k not in ("offset", "limit")}

        def href(at: int) -> str:
            return f"{self.url}{request.path}?" + urlencode(
                {"offset": at, "limit": limit, **others}
            )

        return {
            "href": href(offset),
            "items": [self._item(added_at, entry, fields) for added_at, entry in page],
            "limit": limit,
            "next": href(offset + limit) if offset + limit < total else None,
            "offset": offset,
            "previous": href(max(offset - limit, 0)) if offset > 0 else None,
            "total": total,
        }

    def _item(self, added_at: str, entry: PlaylistEntry, fields: tuple[str, ...]) -> dict[str, Any]:
        if entry is None:
            obj = None
        elif isinstance(entry, LocalFile):
            obj = self._local_object(entry)
        elif isinstance(entry, Episode):
            obj = self._episode_object(entry)
        else:
            obj = self._track_object(entry)
        return {
            "added_at": added_at,
            "added_by": {"id": "soulspot", "type": "user", "uri": "spotify:user:soulspot"},
            "is_local": isinstance(entry, LocalFile),
            "primary_color": None,
            **{name: obj for name in fields},
            "video_thumbnail": {"url": None},
        }

    def _episode_object(self, episode: Episode) -> dict[str, Any]:
        episode_id = _spotify_id("episode", episode.show, episode.title)
        show_id = _spotify_id("show", episode.show)
        return {
            "description": "",
            "duration_ms": episode.duration_ms,
            "explicit": False,
            "external_urls": {"spotify": f"https://open.spotify.com/episode/{episode_id}"},
            "href": f"{self.url}/v1/episodes/{episode_id}",
            "id": episode_id,
            "images": [],
            "is_externally_hosted": False,
            "is_playable": True,
            "languages": ["en"],
            "name": episode.title,
            "release_date": "2024-01-01",
            "release_date_precision": "day",
            "show": {"id": show_id, "name": episode.show, "type": "show"},
            "type": "episode",
            "uri": f"spotify:episode:{episode_id}",
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
