"""Spotify Web API client: the app's or a user's token, and the playlist and track lookups jobs use.

Which token a call uses:

* a ``token`` passed to the call (a user's access token the caller holds) is used as given;
* otherwise the client's own: with ``SPOTIFY_REFRESH_TOKEN`` set, a user's token obtained with
  the authorization-code refresh grant (a new refresh token the accounts service hands back
  replaces the old one and is used next); without it, an app token (client credentials).

The own token is cached until shortly before it expires and shared by every thread using the
client; a 401 (the token expired early, or was revoked) fetches a new one and retries the request
once. A 403 is the job's own error whose message says which credential Spotify wants instead:
playlist entries are served only to a user who owns or collaborates on the playlist, never to an
app token. Spotify's error answers (``{"error": {"status", "message"}}``) become the message of
the error raised. Tokens, refresh tokens and the client secret never reach an exception message
or a log line: only Spotify's messages and the request paths do.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import structlog

from soulspot_jobs.clients.guarded import GuardedClient
from soulspot_jobs.clients.http import (
    AsyncUpstreamHttp,
    Flow,
    Request,
    UpstreamHttp,
    drive,
    drive_async,
    json_body,
)
from soulspot_jobs.errors import UnauthorizedError, UpstreamError, UpstreamRequestError
from soulspot_jobs.settings import SpotifySettings

log = structlog.get_logger("soulspot_jobs.clients.spotify")

T = TypeVar("T")

#: Name of the service in errors and of its circuit breaker.
SERVICE = "spotify-api"
#: Entries asked for per playlist page (the most ``/playlists/{id}/items`` serves).
PAGE_SIZE = 50
#: Entry types asked for: episodes too, so that they are told apart from tracks and counted.
ADDITIONAL_TYPES = "track,episode"
#: Fields of a playlist that :meth:`SpotifyClient.get_playlist` reads.
PLAYLIST_FIELDS = "id,name,owner.id"
#: Seconds before its announced expiry at which a token is replaced (at most a tenth of its life).
TOKEN_EXPIRY_MARGIN = 30.0

#: The settings the app's own credentials are in.
CLIENT_CREDENTIALS = "SPOTIFY_CLIENT_ID/SPOTIFY_CLIENT_SECRET"
#: Which credential a request carried, for the messages of 401 and 403 answers.
APP, OWN_USER, GIVEN = "app", "own_user", "given"
_REFUSED_403 = {
    APP: (
        "Spotify serves this only to a user who owns or collaborates on the playlist, never "
        "to an app (client-credentials) token: pass that user's token, or set "
        "SPOTIFY_REFRESH_TOKEN to that user's refresh token"
    ),
    OWN_USER: (
        "the user of SPOTIFY_REFRESH_TOKEN may not read this (not the playlist's owner or a "
        "collaborator): set SPOTIFY_REFRESH_TOKEN to the refresh token of a user who is"
    ),
    GIVEN: (
        "the user whose token was passed may not read this (not the playlist's owner or a "
        "collaborator): pass the token of a user who is"
    ),
}


@dataclass(frozen=True)
class Track:
    """One Spotify track, reduced to what the download and tagging jobs need."""

    id: str
    name: str
    artists: tuple[str, ...]
    album: str
    #: Length in milliseconds.
    duration_ms: int
    isrc: str | None

    @property
    def query(self) -> str:
        """``"Artist - Title"`` with the first artist: the text searched for on Soulseek."""
        if not self.artists:
            return self.name
        return f"{self.artists[0]} - {self.name}"


@dataclass(frozen=True)
class PlaylistItems:
    """A playlist's tracks in playlist order, and how many entries were left out, by reason.

    Reasons: ``episodes`` (podcast episodes), ``local`` (local files added in the Spotify app),
    ``unavailable`` (entries whose object is ``null``: removed from Spotify), ``other`` (an
    object of a type this client does not know).
    """

    tracks: tuple[Track, ...]
    skipped: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Playlist:
    """A playlist: its name and owner, its tracks, and the entries left out (see PlaylistItems)."""

    id: str
    name: str
    owner_id: str | None
    tracks: tuple[Track, ...]
    skipped: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class OwnToken:
    """A flow's step: the client's own token (see :meth:`SpotifyApi.cached_token`); ``rejected``
    is a token the API has just refused."""

    rejected: str | None = None


class SpotifyApi:
    """What both Spotify clients know, without I/O: each operation as a :data:`Flow`, the own
    token's cache, and how a token is obtained. The sync and async clients only run the flows."""

    def __init__(self, settings: SpotifySettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self._api_origin = _origin(settings.api_url)
        self._token_url = settings.accounts_url.rstrip("/") + "/api/token"
        self._token: str | None = None
        self._token_expires_at = 0.0
        #: The user's refresh token (replaced when the accounts service rotates it), or "".
        self._refresh_token = settings.refresh_token.get_secret_value()

    @property
    def acts_as_user(self) -> bool:
        return bool(self._refresh_token)

    # -- operations ---------------------------------------------------------------------------

    def get_playlist(self, playlist_id: str, token: str | None) -> Flow[Playlist]:
        path = f"/v1/playlists/{quote(playlist_id, safe='')}"
        about = yield from self._get_json(
            path, token, _playlist_about, params={"fields": PLAYLIST_FIELDS}
        )
        items = yield from self.get_playlist_items(playlist_id, token)
        return Playlist(*about, tracks=items.tracks, skipped=items.skipped)

    def get_playlist_items(self, playlist_id: str, token: str | None) -> Flow[PlaylistItems]:
        page = yield from self._get_json(
            f"/v1/playlists/{quote(playlist_id, safe='')}/items",
            token,
            _page,
            params={"limit": PAGE_SIZE, "offset": 0, "additional_types": ADDITIONAL_TYPES},
        )
        tracks: list[Track] = []
        skipped: Counter[str] = Counter()
        while True:
            page_tracks, page_skipped, next_url = page
            tracks.extend(page_tracks)
            skipped.update(page_skipped)
            if not next_url:
                return PlaylistItems(tuple(tracks), dict(skipped))
            page = yield from self._get_json(self._checked_next(next_url), token, _page)

    def get_track(self, track_id: str, token: str | None) -> Flow[Track]:
        return (yield from self._get_json(f"/v1/tracks/{quote(track_id, safe='')}", token, _track))

    # -- requests -----------------------------------------------------------------------------

    def _get_json(
        self, url: str, token: str | None, parse: Callable[[Any], Any], **kwargs: Any
    ) -> Flow[Any]:
        response = yield from self._authorized("GET", url, token, **kwargs)
        return json_body(SERVICE, response, parse)

    def _authorized(
        self, method: str, url: str, token: str | None, **kwargs: Any
    ) -> Flow[httpx.Response]:
        """Send with ``token``, or with the own token: on a 401 a new one, and send once more."""
        if token is not None:
            return (yield from self._send(method, url, token, GIVEN, **kwargs))
        credential = OWN_USER if self.acts_as_user else APP
        own = yield OwnToken()
        try:
            return (yield from self._send(method, url, own, credential, **kwargs))
        except UpstreamRequestError as exc:
            if exc.status != 401:
                raise
        own = yield OwnToken(rejected=own)
        try:
            return (yield from self._send(method, url, own, credential, **kwargs))
        except UpstreamRequestError as exc:
            if exc.status != 401:
                raise
            # a token just issued, refused too: the credentials behind it are wrong
            raise UnauthorizedError(
                SERVICE,
                exc.detail,
                variable=self._variable(),
                status=401,
            ) from None

    def _send(
        self, method: str, url: str, token: str, credential: str, **kwargs: Any
    ) -> Flow[httpx.Response]:
        """One request with ``token``; a playlist's 403, or a 401 of a given token, says what
        is needed."""
        try:
            return (yield Request(method, url, headers=_bearer(token), **kwargs))
        except UpstreamRequestError as exc:
            if exc.status == 403 and "/playlists/" in urlsplit(url).path:
                raise _explained(exc, _REFUSED_403[credential]) from None
            if exc.status == 401 and credential == GIVEN:
                hint = "the token passed was refused (expired or revoked): pass a fresh one"
                raise _explained(exc, hint) from None
            raise

    def _checked_next(self, next_url: str) -> str:
        """``next_url``, if it points at the configured API (the token must go nowhere else)."""
        if _origin(next_url) != self._api_origin:
            raise UpstreamError(
                SERVICE, f"the next playlist page is on another host ({_origin(next_url)})"
            )
        return next_url

    # -- the own token ------------------------------------------------------------------------

    def cached_token(self, rejected: str | None = None) -> str | None:
        """The cached own token while it is valid and not ``rejected``, else ``None``.

        Callers hold their client's token lock from here until :meth:`new_token` has stored
        its successor, so one caller at a time fetches a token and the others reuse it.
        """
        token = self._token
        if token is not None and self._clock() < self._token_expires_at and token != rejected:
            return token
        return None

    def new_token(self) -> Flow[str]:
        """Fetch a new own token from the accounts service, cache it and return it.

        With a refresh token, the refresh grant (a rotated refresh token is kept); else the
        client-credentials grant.
        """
        grant = "refresh_token" if self._refresh_token else "client_credentials"
        form = {"grant_type": grant}
        if self._refresh_token:
            form["refresh_token"] = self._refresh_token
        try:
            response = yield Request(
                "POST", self._token_url, data=form, headers={"Authorization": self._basic()}
            )
        except UpstreamRequestError as exc:
            refused = _refused_credentials(exc, grant)
            if refused is None:
                raise
            variable, hint = refused
            message = f"{exc.detail}; {hint}"
            raise UnauthorizedError(
                SERVICE, message, variable=variable, status=exc.status
            ) from None
        token, expires_in, rotated = json_body(SERVICE, response, _token_answer)
        if rotated and rotated != self._refresh_token:
            self._refresh_token = rotated
            log.info(
                "Spotify rotated the refresh token; the new one is used from now on.",
                event_name="spotify.refresh_token_rotated",
            )
        log.debug(
            f"Spotify access token obtained, valid for {expires_in:.0f} seconds.",
            event_name="spotify.token_obtained",
            expires_in=expires_in,
            grant=grant,
        )
        self._token = token
        self._token_expires_at = (
            self._clock() + expires_in - min(TOKEN_EXPIRY_MARGIN, expires_in / 10)
        )
        return token

    def _variable(self) -> str:
        """The settings behind the own token."""
        return "SPOTIFY_REFRESH_TOKEN" if self._refresh_token else CLIENT_CREDENTIALS

    def _basic(self) -> str:
        secret = self.settings.client_secret.get_secret_value()
        credentials = f"{self.settings.client_id}:{secret}"
        return "Basic " + base64.b64encode(credentials.encode()).decode()


class SpotifyClient:
    """Synchronous Spotify Web API client, safe to share between worker threads.

    ``clock`` (monotonic seconds) decides when a cached token has expired; tests replace it.
    """

    def __init__(
        self, settings: SpotifySettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._api = SpotifyApi(settings, clock)
        self._http = UpstreamHttp(
            SERVICE, settings.api_url, timeout=settings.timeout, error_message=_error_message
        )
        self._token_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SpotifyClient(api_url={self._settings.api_url!r})"

    @property
    def acts_as_user(self) -> bool:
        """Whether the client's own token is a user's (``SPOTIFY_REFRESH_TOKEN`` is set)."""
        return self._api.acts_as_user

    def get_playlist(self, playlist_id: str, token: str | None = None) -> Playlist:
        """The playlist's name, owner and every track (see :meth:`get_playlist_items`)."""
        return self._run(self._api.get_playlist(playlist_id, token))

    def get_playlist_items(self, playlist_id: str, token: str | None = None) -> PlaylistItems:
        """Every track of the playlist in playlist order, following ``next`` through all pages.

        Episodes, local files and entries no longer available are left out and counted.
        ``token``: a user's access token to use instead of the client's own.
        """
        return self._run(self._api.get_playlist_items(playlist_id, token))

    def get_playlist_tracks(self, playlist_id: str, token: str | None = None) -> list[Track]:
        """Every track of the playlist, in playlist order (see :meth:`get_playlist_items`)."""
        return list(self.get_playlist_items(playlist_id, token).tracks)

    def get_track(self, track_id: str, token: str | None = None) -> Track:
        """The track ``track_id``; raises :class:`NotFoundError` when Spotify has no such track."""
        return self._run(self._api.get_track(track_id, token))

    def check_credentials(self) -> str:
        """Obtain a token with the configured credentials now (the refresh grant with
        ``SPOTIFY_REFRESH_TOKEN``, else client credentials): ``"user"`` or ``"app"``, or
        :class:`~soulspot_jobs.errors.UnauthorizedError` naming the setting to fix."""
        with self._token_lock:
            self._run(self._api.new_token())
        return "user" if self.acts_as_user else "app"

    def close(self) -> None:
        self._http.close()

    def _run(self, flow: Flow[T]) -> T:
        return drive(flow, self._http.send, self._own_token)

    def _own_token(self, step: OwnToken) -> str:
        """A token believed valid; one thread at a time fetches a new one, the others wait."""
        with self._token_lock:
            cached = self._api.cached_token(step.rejected)
            if cached is not None:
                return cached
            return drive(self._api.new_token(), self._http.send)


class AsyncSpotifyClient:
    """The async twin of :class:`SpotifyClient` on ``httpx.AsyncClient``: the same requests,
    answers and errors (one :class:`SpotifyApi`); the own token is fetched by one task at a
    time per event loop, the others awaiting it. Close it with ``await client.aclose()`` or
    ``async with``.
    """

    def __init__(
        self, settings: SpotifySettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._api = SpotifyApi(settings, clock)
        self._http = AsyncUpstreamHttp(
            SERVICE, settings.api_url, timeout=settings.timeout, error_message=_error_message
        )
        self._token_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"AsyncSpotifyClient(api_url={self._settings.api_url!r})"

    async def __aenter__(self) -> AsyncSpotifyClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def acts_as_user(self) -> bool:
        """Whether the client's own token is a user's (``SPOTIFY_REFRESH_TOKEN`` is set)."""
        return self._api.acts_as_user

    async def get_playlist(self, playlist_id: str, token: str | None = None) -> Playlist:
        """See :meth:`SpotifyClient.get_playlist`."""
        return await self._run(self._api.get_playlist(playlist_id, token))

    async def get_playlist_items(self, playlist_id: str, token: str | None = None) -> PlaylistItems:
        """See :meth:`SpotifyClient.get_playlist_items`."""
        return await self._run(self._api.get_playlist_items(playlist_id, token))

    async def get_playlist_tracks(self, playlist_id: str, token: str | None = None) -> list[Track]:
        """See :meth:`SpotifyClient.get_playlist_tracks`."""
        return list((await self.get_playlist_items(playlist_id, token)).tracks)

    async def get_track(self, track_id: str, token: str | None = None) -> Track:
        """See :meth:`SpotifyClient.get_track`."""
        return await self._run(self._api.get_track(track_id, token))

    async def check_credentials(self) -> str:
        """See :meth:`SpotifyClient.check_credentials`."""
        await self._run(self._api.new_token())
        return "user" if self.acts_as_user else "app"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, flow: Flow[T]) -> T:
        return await drive_async(flow, self._http.send, self._own_token)

    async def _own_token(self, step: OwnToken) -> str:
        """A token believed valid; one task per event loop fetches a new one, the others wait."""
        loop = asyncio.get_running_loop()
        lock = self._token_locks.get(loop)
        if lock is None:
            lock = self._token_locks[loop] = asyncio.Lock()
        async with lock:
            cached = self._api.cached_token(step.rejected)
            if cached is not None:
                return cached
            return await drive_async(self._api.new_token(), self._http.send)


class CircuitBreakerSpotifyClient(GuardedClient):
    """:class:`SpotifyClient` or :class:`AsyncSpotifyClient` with every call behind the
    ``spotify-api`` circuit breaker."""

    service = SERVICE


# -- answers --------------------------------------------------------------------------------


def _error_message(response: httpx.Response) -> str | None:
    """Spotify's own words in an error answer, if it has any.

    The Web API answers ``{"error": {"status": 404, "message": "..."}}``; the accounts service
    ``{"error": "invalid_client", "error_description": "..."}``.
    """
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(error, dict):
        message = error.get("message")
        return str(message) if message else None
    if isinstance(error, str):
        description = response.json().get("error_description")
        return f"{error}: {description}" if description else error
    return None


def _refused_credentials(exc: UpstreamRequestError, grant: str) -> tuple[str, str] | None:
    """The setting to fix and what to do, when the accounts service's refusal ``exc`` of a
    token request is about our credentials: ``invalid_client`` (400 or 401: a wrong client id
    or secret), a 401, or ``invalid_grant`` of the refresh grant (the refresh token was
    revoked or is wrong). ``None`` for any other refusal."""
    said = str(exc)
    if "invalid_client" in said or exc.status == 401:
        return CLIENT_CREDENTIALS, "check SPOTIFY_CLIENT_ID and SPOTIFY_CLIENT_SECRET"
    if grant == "refresh_token" and exc.status == 400:
        return (
            "SPOTIFY_REFRESH_TOKEN",
            "SPOTIFY_REFRESH_TOKEN was refused: authorize again and set the new one",
        )
    return None


def _explained(exc: UpstreamRequestError, hint: str) -> UpstreamRequestError:
    """``exc`` again, its message followed by ``hint`` (what the caller can do about it)."""
    message = exc.detail
    return UpstreamRequestError(exc.service, f"{message}; {hint}", status=exc.status)


def _token_answer(answer: dict[str, Any]) -> tuple[str, float, str | None]:
    token = answer["access_token"]
    if not isinstance(token, str) or not token:
        raise ValueError("no access_token in the token answer")
    rotated = answer.get("refresh_token")
    return token, float(answer["expires_in"]), rotated if isinstance(rotated, str) else None


def _playlist_about(data: dict[str, Any]) -> tuple[str, str, str | None]:
    owner = data.get("owner") or {}
    return data["id"], data["name"], owner.get("id")


def _page(page: dict[str, Any]) -> tuple[list[Track], Counter[str], str | None]:
    """The tracks of one page of entries, the skipped entries by reason, and the next page."""
    tracks: list[Track] = []
    skipped: Counter[str] = Counter()
    for entry in page["items"]:
        reason = _skip_reason(entry)
        if reason:
            skipped[reason] += 1
        else:
            tracks.append(_track(_entry_object(entry)))
    return tracks, skipped, page.get("next")


def _entry_object(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The track or episode of a playlist entry: ``item``, else the deprecated ``track``."""
    item = entry.get("item")
    return item if item is not None else entry.get("track")


def _skip_reason(entry: dict[str, Any]) -> str | None:
    """Why an entry is not a track to download (``None``: it is one)."""
    item = _entry_object(entry)
    if entry.get("is_local") or (item is not None and item.get("is_local")):
        return "local"
    if item is None:
        return "unavailable"
    kind = item.get("type", "track")
    if kind == "episode" or item.get("episode") is True:
        return "episodes"
    if kind != "track":
        return "other"
    return None


def _track(data: dict[str, Any]) -> Track:
    return Track(
        id=data["id"],
        name=data["name"],
        artists=tuple(artist["name"] for artist in data.get("artists") or ()),
        album=(data.get("album") or {}).get("name", ""),
        duration_ms=int(data.get("duration_ms") or 0),
        isrc=(data.get("external_ids") or {}).get("isrc"),
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, lower-cased, for comparing where requests go."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()
