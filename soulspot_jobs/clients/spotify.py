"""Spotify Web API client: client-credentials auth and the playlist and track lookups jobs use.

The access token is fetched from the accounts service, cached until shortly before it expires
and shared by every thread using the client; a 401 (the token expired early, or was revoked)
fetches a new one and retries the request once. Tokens and the client secret never reach an
exception message or a log line: only the answers' bodies and the request paths do.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import structlog

from soulspot_jobs.clients.guarded import GuardedClient
from soulspot_jobs.clients.http import UpstreamHttp
from soulspot_jobs.errors import UpstreamError, UpstreamRequestError
from soulspot_jobs.settings import SpotifySettings

log = structlog.get_logger("soulspot_jobs.clients.spotify")

#: Name of the service in errors and of its circuit breaker.
SERVICE = "spotify-api"
#: Items asked for per playlist page (the API's maximum).
PAGE_SIZE = 100
#: Seconds before its announced expiry at which a token is replaced (at most a tenth of its life).
TOKEN_EXPIRY_MARGIN = 30.0


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


class SpotifyClient:
    """Synchronous Spotify Web API client, safe to share between worker threads.

    ``clock`` (monotonic seconds) decides when a cached token has expired; tests replace it.
    """

    def __init__(
        self, settings: SpotifySettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._accounts = UpstreamHttp(SERVICE, settings.accounts_url, timeout=settings.timeout)
        self._api = UpstreamHttp(SERVICE, settings.api_url, timeout=settings.timeout)
        self._api_origin = _origin(settings.api_url)
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_expires_at = 0.0

    def __repr__(self) -> str:
        return f"SpotifyClient(api_url={self._settings.api_url!r})"

    def get_playlist_tracks(self, playlist_id: str) -> list[Track]:
        """Every track of the playlist, in playlist order, following ``next`` through all pages.

        Local files and items whose track is no longer available (``track: null``) or is not a
        track (a podcast episode) are left out.
        """
        page = self._get_json(
            f"/v1/playlists/{quote(playlist_id, safe='')}/tracks",
            params={"limit": PAGE_SIZE, "offset": 0},
        )
        tracks: list[Track] = []
        while True:
            page_tracks, next_url = _parse(_page, page)
            tracks.extend(page_tracks)
            if not next_url:
                return tracks
            page = self._get_json(self._checked_next(next_url))

    def get_track(self, track_id: str) -> Track:
        """The track ``track_id``; raises :class:`NotFoundError` when Spotify has no such track."""
        return _parse(_track, self._get_json(f"/v1/tracks/{quote(track_id, safe='')}"))

    def close(self) -> None:
        self._api.close()
        self._accounts.close()

    # -- requests ---------------------------------------------------------------------------

    def _get_json(self, url: str, **kwargs: Any) -> Any:
        response = self._authorized("GET", url, **kwargs)
        return _parse(lambda r: r.json(), response)

    def _authorized(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send with the current token; on a 401, fetch a new token and send once more."""
        token = self._current_token()
        try:
            return self._api.request(method, url, headers=_bearer(token), **kwargs)
        except UpstreamRequestError as exc:
            if exc.status != 401:
                raise
        token = self._current_token(rejected=token)
        return self._api.request(method, url, headers=_bearer(token), **kwargs)

    def _checked_next(self, next_url: str) -> str:
        """``next_url``, if it points at the configured API (the token must go nowhere else)."""
        if _origin(next_url) != self._api_origin:
            raise UpstreamError(
                SERVICE, f"the next playlist page is on another host ({_origin(next_url)})"
            )
        return next_url

    # -- the access token -------------------------------------------------------------------

    def _current_token(self, *, rejected: str | None = None) -> str:
        """A token believed valid; one thread at a time fetches a new one, the others wait.

        ``rejected`` is a token the API has just refused: it is replaced unless another thread
        has replaced it meanwhile.
        """
        with self._token_lock:
            token = self._token
            fresh = token is not None and self._clock() < self._token_expires_at
            if fresh and token != rejected:
                return token
            token, lifetime = self._fetch_token()
            self._token = token
            self._token_expires_at = self._clock() + lifetime
            return token

    def _fetch_token(self) -> tuple[str, float]:
        """A new token and the seconds it may be used, from the accounts service."""
        credentials = (
            f"{self._settings.client_id}:{self._settings.client_secret.get_secret_value()}"
        )
        basic = base64.b64encode(credentials.encode()).decode()
        response = self._accounts.request(
            "POST",
            "/api/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {basic}"},
        )
        token, expires_in = _parse(_token_answer, response)
        log.debug(
            f"Spotify access token obtained, valid for {expires_in:.0f} seconds.",
            event_name="spotify.token_obtained",
            expires_in=expires_in,
        )
        return token, expires_in - min(TOKEN_EXPIRY_MARGIN, expires_in / 10)


class CircuitBreakerSpotifyClient(GuardedClient):
    """:class:`SpotifyClient` with every call behind the ``spotify-api`` circuit breaker."""

    service = SERVICE


# -- parsing --------------------------------------------------------------------------------


def _parse(parser: Callable[[Any], Any], value: Any) -> Any:
    """``parser(value)``; an answer of an unexpected shape becomes an :class:`UpstreamError`."""
    try:
        return parser(value)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamError(SERVICE, f"unexpected answer: {type(exc).__name__}: {exc}") from None


def _token_answer(response: httpx.Response) -> tuple[str, float]:
    answer = response.json()
    token = answer["access_token"]
    if not isinstance(token, str) or not token:
        raise ValueError("no access_token in the token answer")
    return token, float(answer["expires_in"])


def _page(page: dict[str, Any]) -> tuple[list[Track], str | None]:
    """The tracks of one paging object and the URL of the next page (``None`` on the last)."""
    tracks = []
    for item in page["items"]:
        track = item.get("track")
        if not track or item.get("is_local") or track.get("type", "track") != "track":
            continue
        tracks.append(_track(track))
    return tracks, page.get("next")


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
