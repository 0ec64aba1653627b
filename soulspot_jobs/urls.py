"""URL settings: checked once at start-up, and never shown with their password.

The upstream URLs (``SLSKD_URL``, ``MUSICBRAINZ_URL``, ``SPOTIFY_API_URL``,
``SPOTIFY_ACCOUNTS_URL``) and ``REDIS_URL`` may carry a password (``http://user:pw@host``,
``redis://:pw@host:6379/0``). The settings keep such a URL as a :class:`RedactedUrl`: a ``str``
that the clients use as the real URL, but whose ``repr`` (and so ``repr(Settings)``) hides the
password. This module sits below both ``settings`` and ``logging``, which share it.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

#: The password part of ``scheme://user:password@host``; user may be empty (``redis://:pw@h``).
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)(?P<password>[^\s/?#]*)@"
)
#: The same, for text that failed validation: the password runs to the last ``@`` of the word,
#: so a password with an unescaped ``/``, ``?`` or ``#`` is hidden too (at worst, more is).
_LOOSE_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)(?P<password>[^\s@]*)@"
)
#: What replaces a password inside a URL.
PASSWORD_MASK = "***"
#: Schemes an upstream HTTP API may be reached by.
HTTP_SCHEMES = ("http", "https")
#: Schemes redis-py connects by: TCP, TLS, unix socket.
REDIS_SCHEMES = ("redis", "rediss", "unix")
#: Characters no URL setting may contain (whitespace and control characters).
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")


def redact_url(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` replaced by ``***``."""
    return _URL_PASSWORD.sub(rf"\g<head>{PASSWORD_MASK}@", text)


def redact_invalid_url(text: str) -> str:
    """:func:`redact_url` for a value that is not a valid URL (shown in an error message)."""
    return _LOOSE_URL_PASSWORD.sub(rf"\g<head>{PASSWORD_MASK}@", text)


def url_passwords(url: str) -> tuple[str, ...]:
    """The password inside ``url`` as written and percent-decoded (one value when they agree).

    Empty when ``url`` has no password.
    """
    try:
        password = urlsplit(url).password
    except ValueError:
        return ()
    if not password:
        return ()
    return tuple(dict.fromkeys((password, unquote(password))))


class RedactedUrl(str):
    """A URL that is the real URL to every client but hides its password when represented.

    ``str(url)``, f-strings and ``httpx``/``redis`` get the real value; ``repr(url)`` (and with it
    ``repr`` of any settings object holding it) shows ``***`` in place of the password.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(redact_url(str(self)))

    @property
    def redacted(self) -> str:
        """The URL with its password replaced by ``***``, fit for logs and output."""
        return redact_url(str(self))


def _split(url: str, expected: str) -> SplitResult:
    """``url`` split into its parts; ``ValueError`` with ``expected`` when it cannot be."""
    if _FORBIDDEN.search(url):
        raise ValueError(f"must not contain spaces or control characters; expected {expected}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # its message quotes nothing of the URL ("Invalid IPv6 URL")
        raise ValueError(f"{exc}; expected {expected}") from None
    try:
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError:  # its message would quote the port, which may be a mangled password
        raise ValueError(f"port is not a number from 0 to 65535; expected {expected}") from None
    return parts


def check_http_url(url: str) -> RedactedUrl:
    """``url`` if it is an ``http://`` or ``https://`` URL with a host, else ``ValueError``."""
    expected = "http(s)://[user:password@]host[:port][/path]"
    parts = _split(url, expected)
    if parts.scheme.lower() not in HTTP_SCHEMES:
        raise ValueError(f"must be an http:// or https:// URL: {expected}")
    if not parts.hostname:
        raise ValueError(f"has no host: {expected}")
    return RedactedUrl(url)


def check_redis_url(url: str) -> RedactedUrl:
    """``url`` if redis-py can connect by it, else ``ValueError`` saying what is missing.

    ``redis://`` and ``rediss://`` need a host and take an optional port and database number
    (``/0``); ``unix://`` needs the socket's path.
    """
    expected = "redis://[:password@]host[:port][/db], rediss://... or unix:///path/to/socket"
    parts = _split(url, expected)
    scheme = parts.scheme.lower()
    if scheme not in REDIS_SCHEMES:
        raise ValueError(f"must be {expected}")
    for database in parse_qs(parts.query).get("db", []):
        if not database.isdigit():
            raise ValueError(f"database {database!r} is not a number: {expected}")
    if scheme == "unix":
        if not parts.path.strip("/"):
            raise ValueError(f"has no socket path: {expected}")
        return RedactedUrl(url)
    if not parts.hostname:
        raise ValueError(f"has no host: {expected}")
    database = unquote(parts.path).strip("/")
    if database and not database.isdigit():
        raise ValueError(f"database {database!r} is not a number: {expected}")
    return RedactedUrl(url)
