"""The arguments of a job, checked and normalised before anything is enqueued.

Used by :class:`~soulspot_jobs.jobs.app.SoulspotJobs`'s ``enqueue_*`` methods (and fit for a command
line): each function returns the normalised value or raises
:class:`~soulspot_jobs.errors.InvalidJobError` naming the argument, so a job that could never
run is refused at the door, with no record and no message.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit

from soulspot_jobs.errors import InvalidJobError

#: Longest search query, artist or title, in characters after stripping.
MAX_TEXT_LENGTH = 300
#: Longest playlist reference (an id, a link or a URI), in characters after stripping.
MAX_PLAYLIST_REFERENCE_LENGTH = 300
#: Longest track accepted, in milliseconds (a day: anything longer is a mistake).
MAX_DURATION_MS = 24 * 3600 * 1000
#: Characters of a refused value quoted in the error message.
PREVIEW_LENGTH = 40
#: Unicode categories refused in text: control characters, lone surrogates, line separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
#: A Spotify id: 22 characters of base 62.
_SPOTIFY_ID = re.compile(r"[0-9A-Za-z]{22}")
#: ``spotify:playlist:<id>``.
_PLAYLIST_URI = re.compile(r"spotify:playlist:(?P<id>[0-9A-Za-z]{22})")
#: The path of an ``open.spotify.com`` playlist link, with an optional ``intl-xx`` segment.
_PLAYLIST_PATH = re.compile(
    r"/(?:intl-[a-z]{2}(?:[-_][a-z0-9]{2,4})?/)?playlist/(?P<id>[0-9A-Za-z]{22})/?",
    re.IGNORECASE,
)
#: Host of Spotify's web player links.
SPOTIFY_WEB_HOST = "open.spotify.com"
#: An ISRC without hyphens: country, registrant, year, designation (ISO 3901).
_ISRC = re.compile(r"[A-Z]{2}[A-Z0-9]{3}[0-9]{7}")
#: A MusicBrainz id (a UUID), in lower case.
_MBID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

PLAYLIST_FORMS = (
    "a 22-character Spotify playlist id, https://open.spotify.com/playlist/ID "
    "or spotify:playlist:ID"
)


def preview(value: Any) -> str:
    """``repr(value)``, cut to :data:`PREVIEW_LENGTH` characters with its length when longer."""
    if isinstance(value, str | bytes) and len(value) > PREVIEW_LENGTH:
        return f"{value[:PREVIEW_LENGTH]!r}... ({len(value)} characters)"
    return repr(value)


def _string(argument: str, value: Any) -> str:
    """``value`` if it is a ``str``; ``InvalidJobError`` naming its type otherwise."""
    if value is None:
        raise InvalidJobError(argument, "must be given, not None")
    if not isinstance(value, str):
        kind = type(value).__name__
        raise InvalidJobError(argument, f"must be text, not {kind} {preview(value)}")
    return value


def parse_text(argument: str, value: Any, *, max_length: int = MAX_TEXT_LENGTH) -> str:
    """``value`` stripped: text of 1 to ``max_length`` characters without control characters."""
    stripped = _string(argument, value).strip()
    if not stripped:
        raise InvalidJobError(argument, "must not be empty")
    if len(stripped) > max_length:
        raise InvalidJobError(
            argument, f"is {len(stripped)} characters long, at most {max_length} are allowed"
        )
    for char in stripped:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise InvalidJobError(
                argument, f"contains the control character {char!r}: {preview(stripped)}"
            )
    return stripped


def parse_query(value: Any) -> str:
    """A search query ("Artist - Title"), stripped."""
    return parse_text("query", value)


def parse_playlist_id(value: Any) -> str:
    """The 22-character id of a Spotify playlist given as an id, a link or a URI.

    Accepted: ``37i9dQZF1DXcBWIGoYBM5M``, ``spotify:playlist:37i9dQZF1DXcBWIGoYBM5M``,
    ``https://open.spotify.com/playlist/37i9dQZF1DXcBWIGoYBM5M?si=...`` (also with an
    ``intl-xx/`` segment before ``playlist``).
    """
    reference = parse_text("playlist", value, max_length=MAX_PLAYLIST_REFERENCE_LENGTH)
    if _SPOTIFY_ID.fullmatch(reference):
        return reference
    uri = _PLAYLIST_URI.fullmatch(reference)
    if uri:
        return uri.group("id")
    try:
        link = urlsplit(reference)
    except ValueError:
        link = None
    if (
        link is not None
        and link.scheme.lower() in ("http", "https")
        and (link.hostname or "") == SPOTIFY_WEB_HOST
        and not link.username
    ):
        path = _PLAYLIST_PATH.fullmatch(link.path)
        if path:
            return path.group("id")
    raise InvalidJobError("playlist", f"expected {PLAYLIST_FORMS}; got {preview(reference)}")


def parse_isrc(value: Any) -> str:
    """An ISRC in its compact upper-case form (``USRC17607839``); hyphens are accepted."""
    compact = parse_text("isrc", value, max_length=20).replace("-", "").upper()
    if not _ISRC.fullmatch(compact):
        raise InvalidJobError(
            "isrc", f"expected 12 characters like USRC17607839; got {preview(value)}"
        )
    return compact


def parse_mbid(value: Any) -> str:
    """A MusicBrainz recording id (a UUID), in lower case."""
    lowered = parse_text("mbid", value, max_length=36).lower()
    if not _MBID.fullmatch(lowered):
        raise InvalidJobError("mbid", f"expected a UUID; got {preview(value)}")
    return lowered


def parse_duration_ms(value: Any) -> int:
    """A track's length in milliseconds: a whole number from 1 to :data:`MAX_DURATION_MS`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobError(
            "duration_ms", f"must be a whole number of milliseconds, not {preview(value)}"
        )
    if not 0 < value <= MAX_DURATION_MS:
        raise InvalidJobError("duration_ms", f"must be from 1 to {MAX_DURATION_MS}, not {value}")
    return value


def parse_enrichment(
    artist: Any = None,
    title: Any = None,
    *,
    isrc: Any = None,
    mbid: Any = None,
    duration_ms: Any = None,
) -> dict[str, Any]:
    """The details of an enrichment job, each checked; it needs ``mbid``, ``isrc``, or both
    ``artist`` and ``title``. Arguments left ``None`` stay ``None``."""
    details = {
        "artist": parse_text("artist", artist) if artist is not None else None,
        "title": parse_text("title", title) if title is not None else None,
        "isrc": parse_isrc(isrc) if isrc is not None else None,
        "mbid": parse_mbid(mbid) if mbid is not None else None,
        "duration_ms": parse_duration_ms(duration_ms) if duration_ms is not None else None,
    }
    if not (details["mbid"] or details["isrc"] or (details["artist"] and details["title"])):
        raise InvalidJobError("enrichment", "needs mbid, isrc, or both artist and title")
    return details
