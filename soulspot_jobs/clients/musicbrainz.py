"""Client of the MusicBrainz web service (ws/2): recording search, mbid and ISRC lookups.

MusicBrainz asks every client for a meaningful ``User-Agent`` and at most one request per
second per source IP; beyond that it answers 503. Every request here therefore sends
``settings.user_agent`` and first waits on a shared rate limiter (a
:class:`~soulspot_jobs.rate_limit.RedisRateLimiter` across all workers, see
:func:`shared_rate_limiter`). A 503 is a :class:`ServiceUnavailableError` (rate limit or
overload; its ``Retry-After``, when sent, travels with it), so it counts against the breaker.

What a lookup includes follows musicbrainz-server's ``inc`` rules: a recording lookup asks for
releases with their release groups (a release's ``release-group``, and so its primary type,
comes only with ``inc=release-groups``); an ISRC lookup never lists releases (and refuses
``release-groups``), so it asks only for artists and ISRCs: a caller wanting the release follows
up with :meth:`MusicBrainzClient.get_recording`, which waits for its own rate-limit slot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import redis

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
from soulspot_jobs.errors import ConfigurationError, UpstreamRequestError
from soulspot_jobs.keys import Keys
from soulspot_jobs.rate_limit import RateLimiter, RedisRateLimiter
from soulspot_jobs.settings import MusicBrainzSettings

#: The breaker's (and the rate limit's) service name.
SERVICE = "musicbrainz-api"
#: Redis key of the rate limit every worker shares for MusicBrainz.
RATE_LIMIT_KEY = Keys().rate_limit("musicbrainz")
#: Longest a request waits for its rate-limit slot, in seconds, before ``RetryLater``.
DEFAULT_MAX_WAIT = 5.0
#: What a recording lookup includes: artist credits, releases with their groups, ISRCs.
LOOKUP_INC = "artists releases release-groups isrcs"
#: What an ISRC lookup includes (it has no releases to give): artist credits, ISRCs.
ISRC_INC = "artists isrcs"
#: Largest page MusicBrainz serves for a search.
MAX_SEARCH_LIMIT = 100

T = TypeVar("T")

#: Lucene query-syntax characters. ``&&`` and ``||`` are escaped one character at a time, so a
#: lone ``&`` or ``|`` is escaped too (harmless: Lucene reads ``\&`` as ``&``).
LUCENE_SPECIALS = frozenset('+-&|!(){}[]^"~*?:\\/')
_LUCENE_SPECIAL = re.compile(r'([+\-&|!(){}\[\]^"~*?:\\/])')


#: Hosts of the real MusicBrainz (``musicbrainz.org`` and its subdomains, such as ``beta.``).
REAL_HOST = "musicbrainz.org"
#: Domains that stand for no one: a contact there reaches nobody.
_PLACEHOLDER_DOMAIN = re.compile(
    r"(^|\.)(localhost|example\.(org|com|net)|invalid|test|local|localdomain)$", re.IGNORECASE
)


def contact_problem(settings: MusicBrainzSettings) -> str | None:
    """Why a worker must not send ``settings``' User-Agent to the real MusicBrainz, if it must
    not: MusicBrainz asks every client for a way to reach its operator (an e-mail address or
    a URL), and blocks clients that give none. ``None`` for any other host (a mirror, the
    fake) or a contact that can reach someone."""
    host = (urlsplit(str(settings.url)).hostname or "").lower()
    if host != REAL_HOST and not host.endswith("." + REAL_HOST):
        return None
    contact = settings.contact.strip()
    domain = contact.rpartition("@")[2] if "@" in contact else _url_host(contact)
    domain = domain.strip(".")
    if "." in domain and not _PLACEHOLDER_DOMAIN.search(domain):
        return None
    return (
        f"invalid setting MUSICBRAINZ_CONTACT={contact!r}: MUSICBRAINZ_URL is the real "
        f"MusicBrainz ({host}), which asks every client for a real contact in its User-Agent "
        "(an e-mail address or a URL where you can be reached); set MUSICBRAINZ_CONTACT"
    )


def _url_host(text: str) -> str:
    """The host of ``text`` when it is an http(s) URL, else ``""``."""
    match = re.match(r"https?://([^/:?#]+)", text, re.IGNORECASE)
    return match.group(1).lower() if match else ""


def escape_lucene(text: str) -> str:
    """``text`` with a backslash before each Lucene special character, to search it verbatim."""
    return _LUCENE_SPECIAL.sub(r"\\\1", text)


@dataclass(frozen=True)
class Release:
    """One release (album, single, compilation...) a recording appears on."""

    id: str
    title: str
    #: "Official", "Promotion", "Bootleg", ... or None when MusicBrainz does not know.
    status: str | None
    #: ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``, or None.
    date: str | None
    country: str | None
    #: The release group's primary type: "Album", "Single", "EP", ... or None.
    primary_type: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Release:
        group = data.get("release-group") or {}
        return cls(
            id=data["id"],
            title=data["title"],
            status=data.get("status") or None,
            date=data.get("date") or None,
            country=data.get("country") or None,
            primary_type=group.get("primary-type") or None,
        )


@dataclass(frozen=True)
class Recording:
    """One MusicBrainz recording, from a search or a lookup."""

    id: str
    #: Search relevance 0-100; None for a lookup (by mbid or ISRC), which has no score.
    score: int | None
    title: str
    #: Length in milliseconds, or None when MusicBrainz does not know it.
    length_ms: int | None
    #: The credited names joined with their join phrases, e.g. "Artist A feat. Artist B".
    artist_credit: str
    artist_ids: tuple[str, ...]
    first_release_date: str | None
    isrcs: tuple[str, ...]
    releases: tuple[Release, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Recording:
        credits = data.get("artist-credit") or ()
        score = data.get("score")
        length = data.get("length")
        return cls(
            id=data["id"],
            score=None if score is None else int(score),
            title=data["title"],
            length_ms=None if length is None else int(length),
            artist_credit="".join(c["name"] + (c.get("joinphrase") or "") for c in credits),
            artist_ids=tuple(c["artist"]["id"] for c in credits),
            first_release_date=data.get("first-release-date") or None,
            isrcs=tuple(data.get("isrcs") or ()),
            releases=tuple(Release.from_json(r) for r in data.get("releases") or ()),
        )


def best_match(
    recordings: Iterable[Recording], *, duration_ms: int | None = None, min_score: int = 80
) -> Recording | None:
    """The recording that most likely is the track, or None when none is good enough.

    The rule: only recordings scoring at least ``min_score`` are candidates (a looked-up
    recording, which has no score, counts as 100: it was found by identifier). The highest
    score wins. Among equal scores, the length closest to ``duration_ms`` wins, an unknown
    length losing to any known one; without ``duration_ms``, or on a tie, MusicBrainz's own
    order decides (the first one wins).
    """

    def key(indexed: tuple[int, Recording]) -> tuple[int, float, int]:
        index, recording = indexed
        distance = 0.0
        if duration_ms is not None:
            length = recording.length_ms
            distance = math.inf if length is None else abs(length - duration_ms)
        return (-_score(recording), distance, index)

    candidates = [(i, r) for i, r in enumerate(recordings) if _score(r) >= min_score]
    if not candidates:
        return None
    return min(candidates, key=key)[1]


def _score(recording: Recording) -> int:
    return 100 if recording.score is None else recording.score


@dataclass(frozen=True)
class RateSlot:
    """A flow's step: wait for the next slot of the shared rate limit (if the client has one)."""


class MusicBrainzApi:
    """What both MusicBrainz clients know, without I/O: each operation as a :data:`Flow`."""

    def search_recordings(self, artist: str, title: str, limit: int) -> Flow[list[Recording]]:
        if not 1 <= limit <= MAX_SEARCH_LIMIT:
            raise ConfigurationError(f"limit must be 1 to {MAX_SEARCH_LIMIT}, got {limit}")
        if not artist.strip() or not title.strip():
            raise UpstreamRequestError(SERVICE, "a search needs a non-empty artist and title")
        query = f'artist:"{escape_lucene(artist)}" AND recording:"{escape_lucene(title)}"'
        return (yield from self._get("/ws/2/recording", _recordings, query=query, limit=limit))

    def get_recording(self, mbid: str) -> Flow[Recording]:
        path = f"/ws/2/recording/{quote(mbid, safe='')}"
        return (yield from self._get(path, Recording.from_json, inc=LOOKUP_INC))

    def lookup_isrc(self, isrc: str) -> Flow[list[Recording]]:
        path = f"/ws/2/isrc/{quote(isrc, safe='')}"
        return (yield from self._get(path, _recordings, inc=ISRC_INC))

    def _get(self, path: str, parse: Callable[[Any], T], **params: Any) -> Flow[T]:
        """GET ``path`` in its rate-limit slot; the answer read by ``parse`` (a body that is
        not the JSON promised is the service's failure, see :func:`json_body`)."""
        yield RateSlot()
        response = yield Request("GET", path, params={**params, "fmt": "json"})
        return json_body(SERVICE, response, parse)


#: The one instance: the API's knowledge holds no state.
API = MusicBrainzApi()


def _http_options(settings: MusicBrainzSettings) -> dict[str, Any]:
    """How both clients talk to MusicBrainz: its timeout and the User-Agent it requires."""
    return {"timeout": settings.timeout, "headers": {"User-Agent": settings.user_agent}}


class MusicBrainzClient:
    """Synchronous ws/2 client; each request waits for its rate-limit slot first.

    Without a ``limiter`` nothing spaces the requests: MusicBrainz will answer 503 to a burst.
    ``max_wait`` (seconds) bounds the wait for a slot; beyond it the limiter raises
    :class:`~soulspot_jobs.errors.RetryLater` and the job is deferred.
    """

    def __init__(
        self,
        settings: MusicBrainzSettings,
        *,
        limiter: RateLimiter | None = None,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> None:
        self._limiter = limiter
        self._max_wait = max_wait
        self._http = UpstreamHttp(SERVICE, settings.url, **_http_options(settings))

    def search_recordings(self, artist: str, title: str, *, limit: int = 10) -> list[Recording]:
        """Recordings matching ``artist`` and ``title``, best first (``limit``: 1 to 100)."""
        return self._run(API.search_recordings(artist, title, limit))

    def get_recording(self, mbid: str) -> Recording:
        """The recording ``mbid``, with its artists, releases (and their types) and ISRCs.

        Raises :class:`~soulspot_jobs.errors.NotFoundError` when MusicBrainz has no such id.
        """
        return self._run(API.get_recording(mbid))

    def lookup_isrc(self, isrc: str) -> list[Recording]:
        """The recordings carrying ``isrc`` (usually one), with artists and ISRCs but no
        releases: MusicBrainz lists none in an ISRC lookup (see :meth:`get_recording`).

        Raises :class:`~soulspot_jobs.errors.NotFoundError` when no recording has it.
        """
        return self._run(API.lookup_isrc(isrc))

    def close(self) -> None:
        self._http.close()

    def _run(self, flow: Flow[T]) -> T:
        return drive(flow, self._http.send, self._slot)

    def _slot(self, step: RateSlot) -> None:
        if self._limiter is not None:
            self._limiter.acquire(max_wait=self._max_wait)


class AsyncMusicBrainzClient:
    """The async twin of :class:`MusicBrainzClient` on ``httpx.AsyncClient`` (one
    :class:`MusicBrainzApi`); the rate-limit slot is awaited (``acquire_async``), never
    blocking the event loop. Close it with ``await client.aclose()`` or ``async with``.
    """

    def __init__(
        self,
        settings: MusicBrainzSettings,
        *,
        limiter: RateLimiter | None = None,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> None:
        self._limiter = limiter
        self._max_wait = max_wait
        self._http = AsyncUpstreamHttp(SERVICE, settings.url, **_http_options(settings))

    async def __aenter__(self) -> AsyncMusicBrainzClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def search_recordings(
        self, artist: str, title: str, *, limit: int = 10
    ) -> list[Recording]:
        """See :meth:`MusicBrainzClient.search_recordings`."""
        return await self._run(API.search_recordings(artist, title, limit))

    async def get_recording(self, mbid: str) -> Recording:
        """See :meth:`MusicBrainzClient.get_recording`."""
        return await self._run(API.get_recording(mbid))

    async def lookup_isrc(self, isrc: str) -> list[Recording]:
        """See :meth:`MusicBrainzClient.lookup_isrc`."""
        return await self._run(API.lookup_isrc(isrc))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, flow: Flow[T]) -> T:
        return await drive_async(flow, self._http.send, self._slot)

    async def _slot(self, step: RateSlot) -> None:
        if self._limiter is not None:
            await self._limiter.acquire_async(max_wait=self._max_wait)


def _recordings(data: Mapping[str, Any]) -> list[Recording]:
    return [Recording.from_json(r) for r in data["recordings"]]


def shared_rate_limiter(
    client: redis.Redis, settings: MusicBrainzSettings, *, key: str = RATE_LIMIT_KEY
) -> RedisRateLimiter:
    """The limiter all workers share for MusicBrainz: a request per ``settings.min_interval``."""
    return RedisRateLimiter(client, key, settings.min_interval, service=SERVICE)


class CircuitBreakerMusicBrainzClient(GuardedClient):
    """A :class:`MusicBrainzClient` or :class:`AsyncMusicBrainzClient` whose every call goes
    through the MusicBrainz breaker."""

    service = SERVICE
