"""A fake MusicBrainz web service (ws/2) over the shared catalog.

It serves the three endpoints the client uses, with the JSON shapes MusicBrainz sends:

* ``GET /ws/2/recording?query=<lucene>&limit=&offset=`` searches; the query is understood as
  ``field:"phrase"`` / ``field:word`` clauses joined by ``AND`` (fields ``artist``,
  ``recording``, ``isrc``; backslash escapes undone; words without a field match the title or
  the artist). Each catalog track has the exact recording (score 100) and near matches:
  the same song on a compilation (also 100, a little longer), a live version, a radio edit
  and a cover, each with its own length and a lower score. A query that Lucene's query parser
  refuses (an unclosed quote, parenthesis, range or ``/regex/``, a lone ``AND``, a field with
  no value, a trailing backslash) is a 400 as musicbrainz-server words the search server's 400
  (``Data::WebService::xml_search``): "Search server could not complete query: Bad request".
* ``GET /ws/2/recording/<mbid>?inc=...`` and ``GET /ws/2/isrc/<isrc>?inc=...`` look up, with
  musicbrainz-server's ``inc`` rules (its ws/2 validator and JSON serializers): ``inc`` values
  are joined by ``+`` or a space; ``artists`` adds ``artist-credit`` (to the recording and its
  releases), ``isrcs`` the ISRCs, ``releases`` the releases of a recording lookup, each with its
  ``release-group`` only when ``release-groups`` is asked for too. An ISRC lookup never lists
  releases (its recordings are not serialized as top level) and refuses ``release-groups``.
  ``media`` needs ``releases``. A value the resource does not accept is a 400 worded as
  MusicBrainz words it. Unknown ids are a 404 ``{"error": "Not Found", "help": ...}``.

Every path is also served with a trailing slash (``/ws/2/recording/?query=...``), as
musicbrainz-server's Catalyst dispatcher ignores one; ``musicbrainzngs`` searches that way.

Like MusicBrainz it refuses (403) requests without a meaningful ``User-Agent`` (missing, or a
library's default such as ``python-httpx/0.28``), answers JSON only when asked (``fmt=json``
or ``Accept: application/json``), and enforces its rate rule: a request arriving less than
``min_interval`` seconds (less a small ``tolerance`` for network jitter) after the previous
accepted one gets 503 "Your requests are exceeding the allowable rate limit...", without
``Retry-After`` unless ``retry_after`` is given.
``accepted_times`` and ``rate_limited`` let a test check that a client's limiter held.
The base fault controls (outages, failures, 429, latency) apply before all of this.
"""

from __future__ import annotations

import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from soulspot_jobs.fakes.catalog import CATALOG, CatalogTrack
from soulspot_jobs.fakes.index import KeyIndex
from soulspot_jobs.fakes.server import FakeServer, Handler, Request, Response

#: The ``error`` of every rate-limited answer, as MusicBrainz words it.
RATE_LIMIT_MESSAGE = (
    "Your requests are exceeding the allowable rate limit. Please see "
    "https://musicbrainz.org/doc/MusicBrainz_API/Rate_Limiting for more information."
)
#: The ``help`` of every error answer.
HELP = "For usage, please see: https://musicbrainz.org/development/mmd"
#: The ``error`` of a search whose query the search server could not parse: musicbrainz-server
#: answers its search server's 400 with this 400 (``Data::WebService::xml_search``).
SEARCH_BAD_REQUEST = "Search server could not complete query: Bad request"
#: User-Agent prefixes of HTTP libraries and tools, refused as not meaningful (lower case).
GENERIC_AGENTS = (
    "python-httpx/",
    "python-requests/",
    "python-urllib/",
    "aiohttp/",
    "curl/",
    "wget/",
    "java/",
    "go-http-client/",
    "okhttp/",
    "axios/",
    "node-fetch/",
    "libwww-perl/",
)
#: Relationship ``inc`` values every lookup accepts (``<entity>-rels``).
RELATION_INCS = frozenset(
    f"{entity}-rels"
    for entity in [
        "area",
        "artist",
        "event",
        "genre",
        "instrument",
        "label",
        "place",
        "recording",
        "release",
        "release-group",
        "series",
        "url",
        "work",
    ]
)
#: ``inc`` values of a recording lookup (musicbrainz-server's ``WS::2::Recording``).
RECORDING_INCS = RELATION_INCS | frozenset(
    [
        "artists",
        "releases",
        "artist-credits",
        "puids",
        "isrcs",
        "aliases",
        "tags",
        "user-tags",
        "genres",
        "user-genres",
        "ratings",
        "user-ratings",
        "release-groups",
        "work-level-rels",
        "annotation",
    ]
)
#: ``inc`` values of an ISRC lookup (``WS::2::ISRC``): no ``release-groups``, no ``genres``.
ISRC_INCS = RELATION_INCS | frozenset(
    [
        "artists",
        "releases",
        "puids",
        "isrcs",
        "artist-credits",
        "aliases",
        "tags",
        "user-tags",
        "ratings",
        "user-ratings",
    ]
)
#: ``inc`` values accepted only beside another one (the validator's ``%extra_inc``).
EXTRA_INCS = {
    "releases": frozenset(["artist-credits", "discids", "media", "status", "type"]),
    "release-groups": frozenset(["artist-credits", "type"]),
    "recordings": frozenset(["artist-credits", "puids", "isrcs"]),
}
#: Seconds by which a request may arrive early and still be accepted. A client spacing its
#: requests exactly ``min_interval`` apart sees them arrive a few milliseconds early or late
#: (measured here: up to 5.5 ms on loopback), so an exact rule would refuse well-behaved clients
#: at random; MusicBrainz itself averages over time. A burst still arrives milliseconds apart.
ARRIVAL_TOLERANCE = 0.05
#: Largest and default page of a search.
MAX_LIMIT, DEFAULT_LIMIT = 100, 25
#: Points a search score loses for each word of a field that the query did not ask for.
SCORE_PER_EXTRA_WORD = 10

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ISRC = re.compile(r"^[A-Z]{2}[A-Z0-9]{3}[0-9]{7}$")
_CLAUSE = re.compile(r'(?:([A-Za-z][\w-]*):)?(?:"((?:\\.|[^"\\])*)"|((?:\\.|[^\s"\\])+))')
#: One token of Lucene's classic query syntax (its ``QueryParser.jj``), white space before it
#: skipped: a phrase, a range, a regular expression, one of the syntax characters, or a term
#: (which may hold escapes, wildcards, and ``+``/``-`` after its first character). A character
#: no token can start with (a lone quote, slash or backslash, an unclosed range) is ``bad``.
_LUCENE_TOKEN = re.compile(
    r"""\s*(?:
      (?P<phrase>"(?:\\.|[^"\\])*")
    | (?P<range>[\[{]\s*(?:"(?:\\.|[^"\\])*"|(?:\\.|[^\s\]}\\])+)
        \s+TO\s+(?:"(?:\\.|[^"\\])*"|(?:\\.|[^\s\]}\\])+)\s*[\]}])
    | (?P<regex>/(?:\\.|[^/\\])*/)
    | (?P<symbol>[()+\-!:^~])
    | (?P<term>(?:\\.|[^\s"()\[\]{}+\-!:^~\\/])(?:\\.|[^\s"()\[\]{}!:^~\\/])*)
    | (?P<bad>\S)
    )""",
    re.VERBOSE,
)
#: Terms that are Lucene operators (upper case only; ``and`` is a word).
_LUCENE_OPERATORS = {"AND": "AND", "&&": "AND", "OR": "OR", "||": "OR", "NOT": "NOT"}
#: A boost or a fuzziness: digits, maybe a fraction.
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class FakeRelease:
    """The release a fake recording appears on (one medium, one track of it)."""

    id: str
    title: str
    status: str
    date: str
    country: str
    primary_type: str
    group_id: str
    track_count: int
    #: Position of the recording's track on the release's single medium.
    position: int
    format: str


@dataclass(frozen=True)
class FakeRecording:
    """One recording the fake knows, with everything any of its answers may show."""

    id: str
    title: str
    #: Milliseconds.
    length: int
    artist: str
    artist_id: str
    isrcs: tuple[str, ...]
    release: FakeRelease

    @property
    def first_release_date(self) -> str:
        return self.release.date


class FakeMusicBrainz(FakeServer):
    """MusicBrainz ws/2 on loopback, rate rule included (``min_interval=0`` turns it off)."""

    def __init__(
        self,
        *,
        catalog: Iterable[CatalogTrack] = CATALOG,
        min_interval: float = 1.0,
        retry_after: float | None = None,
        tolerance: float = ARRIVAL_TOLERANCE,
        port: int = 0,
    ) -> None:
        super().__init__(port=port)
        #: Seconds that must separate two accepted requests.
        self.min_interval = min_interval
        #: Seconds by which an arrival may come early, see ``ARRIVAL_TOLERANCE``.
        self.tolerance = tolerance
        #: ``Retry-After`` (seconds) of rate-limited answers; None sends none, like MusicBrainz.
        self.retry_after = retry_after
        #: ``time.monotonic()`` at which each request passing the rate rule arrived.
        self.accepted_times: list[float] = []
        #: Requests answered 503 by the rate rule.
        self.rate_limited = 0
        self._rate_lock = threading.Lock()
        self.recordings: tuple[FakeRecording, ...] = tuple(
            recording for track in catalog for recording in _recordings_of(track)
        )
        self._by_id = {recording.id: recording for recording in self.recordings}
        #: The words of each recording's title and artist, and its ISRCs (``isrc:`` before
        #: each), by its position in ``recordings``.
        self._keys = KeyIndex()
        for position, recording in enumerate(self.recordings):
            words = _words(f"{recording.title} {recording.artist}")
            self._keys.add(position, [*words, *(_isrc_key(isrc) for isrc in recording.isrcs)])
        for path, handler in [
            ("/ws/2/recording", self._search),
            ("/ws/2/recording/{mbid}", self._lookup),
            ("/ws/2/isrc/{isrc}", self._isrc),
        ]:
            for pattern in (path, f"{path}/"):  # Catalyst ignores a trailing slash
                self.route("GET", pattern, self._gated(handler))

    def error_body(self, status: int, message: str) -> Any:
        """MusicBrainz's error shape, also for the base faults' answers."""
        return {"error": message, "help": HELP}

    # -- what MusicBrainz checks before serving anything --------------------------------------

    def _gated(self, handler: Handler) -> Handler:
        def gated(request: Request) -> Response:
            refusal = self._check_agent(request) or self._check_rate() or _check_format(request)
            return refusal or handler(request)

        return gated

    def _check_agent(self, request: Request) -> Response | None:
        agent = request.headers.get("user-agent", "").strip()
        if agent and not agent.lower().startswith(GENERIC_AGENTS):
            return None
        message = (
            "Your User-Agent is missing or not meaningful. Please send an application name, "
            "version and contact, e.g. 'MyApp/1.0 ( me@example.org )'."
        )
        return Response(403, {"error": message, "help": HELP})

    def _check_rate(self) -> Response | None:
        with self._rate_lock:
            now = time.monotonic()
            last = self.accepted_times[-1] if self.accepted_times else None
            if last is None or now - last >= self.min_interval - self.tolerance:
                self.accepted_times.append(now)
                return None
            self.rate_limited += 1
        headers = {} if self.retry_after is None else {"Retry-After": f"{self.retry_after:g}"}
        return Response(503, {"error": RATE_LIMIT_MESSAGE, "help": HELP}, headers)

    # -- endpoints ---------------------------------------------------------------------------

    def _search(self, request: Request) -> Response:
        query = request.query.get("query", "").strip()
        if not query:
            return _error(400, "Missing required parameter: query.")
        try:
            limit = min(max(int(request.query.get("limit", DEFAULT_LIMIT)), 1), MAX_LIMIT)
            offset = max(int(request.query.get("offset", 0)), 0)
        except ValueError:
            return _error(400, "limit and offset must be integers.")
        if not _parses(query):
            return _error(400, SEARCH_BAD_REQUEST)
        clauses = _parse_query(query)
        scored = [(_score(r, clauses), r) for r in self._candidates(clauses)]
        hits = sorted(((s, r) for s, r in scored if s is not None), key=lambda hit: -hit[0])
        body = {
            "created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "count": len(hits),
            "offset": offset,
            "recordings": [_search_json(r, s) for s, r in hits[offset : offset + limit]],
        }
        return Response(200, body)

    def _candidates(self, clauses: list[tuple[str | None, str]]) -> list[FakeRecording]:
        """The recordings that have every word and ISRC of ``clauses``, in catalog order: the
        only ones :func:`_score` can match, found without reading the whole catalog."""
        keys = [
            key
            for field, text in clauses
            for key in ([_isrc_key(text.upper())] if field == "isrc" else _words(text))
        ]
        if not keys:
            return list(self.recordings)
        return [self.recordings[n] for n in self._keys.having_all(keys)]

    def _lookup(self, request: Request) -> Response:
        mbid = request.params["mbid"]
        incs = _incs(request, "recording", RECORDING_INCS)
        if isinstance(incs, Response):
            return incs
        if not _UUID.match(mbid):
            return _error(400, "Invalid mbid.")
        recording = self._by_id.get(mbid)
        if recording is None:
            return _error(404, "Not Found")
        return Response(200, _lookup_json(recording, incs))

    def _isrc(self, request: Request) -> Response:
        isrc = request.params["isrc"]
        incs = _incs(request, "isrc", ISRC_INCS)
        if isinstance(incs, Response):
            return incs
        if not _ISRC.match(isrc):
            return _error(400, "Invalid isrc.")
        found = [self.recordings[n] for n in self._keys.having_all([_isrc_key(isrc)])]
        if not found:
            return _error(404, "Not Found")
        recordings = [_lookup_json(r, incs, toplevel=False) for r in found]
        return Response(200, {"isrc": isrc, "recordings": recordings})


# -- the catalog as MusicBrainz would hold it ---------------------------------------------------


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "fake-musicbrainz:" + "/".join(parts)))


def _recordings_of(track: CatalogTrack) -> list[FakeRecording]:
    """The exact recording of ``track`` first, then its near matches."""
    year = int(track.release_date[:4])

    def release(
        kind: str,
        title: str,
        date: str,
        *,
        status: str = "Official",
        country: str = "GB",
        primary_type: str = "Album",
        track_count: int = 10,
        position: int = 3,
    ) -> FakeRelease:
        release_id = track.release_mbid if kind == "original" else _uuid(track.mbid, kind, "rel")
        return FakeRelease(
            id=release_id,
            title=title,
            status=status,
            date=date,
            country=country,
            primary_type=primary_type,
            group_id=_uuid(release_id, "group"),
            track_count=track_count,
            position=position,
            format="CD",
        )

    def recording(
        kind: str,
        title: str,
        length: int,
        on: FakeRelease,
        *,
        artist: str = track.artist,
        isrcs: tuple[str, ...] = (),
    ) -> FakeRecording:
        return FakeRecording(
            id=track.mbid if kind == "original" else _uuid(track.mbid, kind),
            title=title,
            length=length,
            artist=artist,
            artist_id=_uuid("artist", artist),
            isrcs=isrcs,
            release=on,
        )

    length = track.duration_ms
    return [
        recording(
            "original",
            track.title,
            length,
            release("original", track.album, track.release_date),
            isrcs=(track.isrc,),
        ),
        recording(
            "compilation",
            track.title,
            length + 4_000,
            release(
                "compilation",
                f"The Very Best of {track.artist}",
                f"{year + 12}-10-02",
                country="XE",
                primary_type="Compilation",
                track_count=18,
                position=7,
            ),
        ),
        recording(
            "live",
            f"{track.title} (live)",
            length + 41_000,
            release("live", f"Live in Paris {year + 1}", f"{year + 2}-03-14", country="FR"),
        ),
        recording(
            "radio-edit",
            f"{track.title} (radio edit)",
            round(length * 0.62),
            release(
                "radio-edit",
                track.title,
                track.release_date,
                status="Promotion",
                primary_type="Single",
                track_count=2,
                position=1,
            ),
        ),
        recording(
            "cover",
            track.title,
            length - 9_000,
            release("cover", f"A Tribute to {track.artist}", f"{year + 8}-06-01", country="US"),
            artist=f"{track.artist} Tribute",
        ),
    ]


# -- Lucene, as much as the client's queries need ------------------------------------------------


def _isrc_key(isrc: str) -> str:
    """An ISRC as a key of the index, apart from any word."""
    return f"isrc:{isrc}"


def _words(text: str) -> list[str]:
    """Lower-case words without accents, as MusicBrainz's analyser compares them."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.findall(r"\w+", plain.casefold())


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _parse_query(query: str) -> list[tuple[str | None, str]]:
    """``(field, text)`` clauses of ``query``; ``AND`` between them is implied and dropped."""
    clauses = []
    for match in _CLAUSE.finditer(query):
        field, phrase, word = match.groups()
        text = _unescape(phrase if phrase is not None else word)
        if field is None and phrase is None and text == "AND":
            continue
        clauses.append((field.lower() if field else None, text))
    return clauses


def _parses(query: str) -> bool:
    """Whether Lucene's classic query parser, which the search server runs, accepts ``query``.

    The grammar (``QueryParser.jj``): a query is clauses, each after an optional ``AND``/``OR``
    (``&&``/``||``) but the first; a clause is an optional ``+``, ``-``, ``!`` or ``NOT``, an
    optional ``field:``, then a term, phrase, range or ``/regex/`` (``~`` and a number may
    follow) or a parenthesised query, and an optional ``^number`` boost.
    """
    tokens: list[tuple[str, str]] = []
    for match in _LUCENE_TOKEN.finditer(query):
        kind = next(k for k in ("phrase", "range", "regex", "symbol", "term", "bad") if match[k])
        if kind == "bad":
            return False
        text = match[kind]
        if kind == "term":
            kind = _LUCENE_OPERATORS.get(text, "term")
        tokens.append((text if kind == "symbol" else kind, text))
    parser = _LuceneParser(tokens)
    return parser.query() and parser.at == len(tokens)


class _LuceneParser:
    """A recogniser of :func:`_parses`'s grammar over ``(kind, text)`` tokens."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        #: Position of the next token.
        self.at = 0

    def kind(self, ahead: int = 0) -> str | None:
        position = self.at + ahead
        return self.tokens[position][0] if position < len(self.tokens) else None

    def take(self, *kinds: str) -> bool:
        if self.kind() in kinds:
            self.at += 1
            return True
        return False

    def number(self) -> bool:
        if self.kind() == "term" and _NUMBER.fullmatch(self.tokens[self.at][1]):
            self.at += 1
            return True
        return False

    def query(self) -> bool:
        """Clauses up to the end or a ``)``; at least one."""
        if not self.clause():
            return False
        while self.kind() not in (None, ")"):
            self.take("AND", "OR")
            if not self.clause():
                return False
        return True

    def clause(self) -> bool:
        self.take("+", "-", "!", "NOT")
        if self.kind() == "term" and self.kind(1) == ":":
            self.at += 2
        if self.take("("):
            if not (self.query() and self.take(")")):
                return False
        elif self.take("term", "phrase", "range", "regex"):
            if self.take("~"):
                self.number()
        else:
            return False
        return not self.take("^") or self.number()


def _score(recording: FakeRecording, clauses: list[tuple[str | None, str]]) -> int | None:
    """The search score of ``recording`` (None: no match): 100 less 10 per extra word."""
    extra = 0
    for field, text in clauses:
        wanted = _words(text)
        if field == "isrc":
            if text.upper() not in recording.isrcs:
                return None
            continue
        if field is None:
            haystack = _words(f"{recording.title} {recording.artist}")
            if not all(word in haystack for word in wanted):
                return None
            continue
        if field == "artist":
            have = _words(recording.artist)
        elif field == "recording":
            have = _words(recording.title)
        else:
            return None
        if not _contains(have, wanted):
            return None
        extra += len(have) - len(wanted)
    return max(100 - SCORE_PER_EXTRA_WORD * extra, 1)


def _contains(have: list[str], wanted: list[str]) -> bool:
    """Whether ``wanted`` occurs in ``have`` as consecutive words (a Lucene phrase)."""
    n = len(wanted)
    return any(have[i : i + n] == wanted for i in range(len(have) - n + 1))


# -- answers -------------------------------------------------------------------------------------


def _check_format(request: Request) -> Response | None:
    if request.query.get("fmt") == "json" or "application/json" in request.headers.get(
        "accept", ""
    ):
        return None
    return Response(406, text="This fake MusicBrainz serves JSON only: send fmt=json.\n")


def _incs(request: Request, resource: str, accepted: frozenset[str]) -> frozenset[str] | Response:
    """The ``inc`` values asked for, or the 400 MusicBrainz answers to one ``resource`` refuses."""
    incs = frozenset(i for i in re.split(r"[+ ]", request.query.get("inc", "")) if i)
    extra = frozenset().union(*(EXTRA_INCS.get(i, ()) for i in incs))
    for inc in sorted(incs - accepted - extra):
        needs = sorted(other for other, allowed in EXTRA_INCS.items() if inc in allowed)
        if needs:
            return _error(
                400,
                f"{inc} is not a valid option for the inc parameter for the {resource} resource "
                f"unless you specify one of the following other inc parameters: "
                f"{', '.join(needs)}",
            )
        return _error(400, f"{inc} is not a valid inc parameter for the {resource} resource.")
    return incs


def _error(status: int, message: str) -> Response:
    return Response(status, {"error": message, "help": HELP})


def _artist_credit(recording: FakeRecording) -> list[dict[str, Any]]:
    artist = {
        "id": recording.artist_id,
        "name": recording.artist,
        "sort-name": _sort_name(recording.artist),
        "disambiguation": "",
    }
    return [{"name": recording.artist, "joinphrase": "", "artist": artist}]


def _sort_name(name: str) -> str:
    """``Name, The`` for a name starting with "The", as MusicBrainz sorts it; else the name."""
    return f"{name[4:]}, The" if name.startswith("The ") else name


def _release_json(
    recording: FakeRecording, *, media: bool, group: bool = True, credit: bool = False
) -> dict[str, Any]:
    release = recording.release
    data: dict[str, Any] = {
        "id": release.id,
        "title": release.title,
        "status": release.status,
        "date": release.date,
        "country": release.country,
        "track-count": release.track_count,
    }
    if group:
        data["release-group"] = {"id": release.group_id, "primary-type": release.primary_type}
    if credit:
        data["artist-credit"] = _artist_credit(recording)
    if media:
        track = {
            "id": _uuid(recording.id, release.id, "track"),
            "number": str(release.position),
            "title": recording.title,
            "length": recording.length,
        }
        data["media"] = [
            {
                "position": 1,
                "format": release.format,
                "track-count": release.track_count,
                "track-offset": release.position - 1,
                "track": [track],
            }
        ]
    return data


def _base_json(recording: FakeRecording) -> dict[str, Any]:
    return {
        "id": recording.id,
        "title": recording.title,
        "length": recording.length,
        "video": False,
        "disambiguation": "",
        "first-release-date": recording.first_release_date,
    }


def _search_json(recording: FakeRecording, score: int) -> dict[str, Any]:
    data = {"id": recording.id, "score": score} | _base_json(recording)
    data["artist-credit"] = _artist_credit(recording)
    if recording.isrcs:
        data["isrcs"] = list(recording.isrcs)
    data["releases"] = [_release_json(recording, media=True)]
    return data


def _lookup_json(
    recording: FakeRecording, incs: frozenset[str], *, toplevel: bool = True
) -> dict[str, Any]:
    """A looked-up recording; only a top-level one (not an ISRC lookup's) lists releases."""
    data = _base_json(recording)
    credit = bool(incs & {"artists", "artist-credits"})
    if credit:
        data["artist-credit"] = _artist_credit(recording)
    if "isrcs" in incs:
        data["isrcs"] = list(recording.isrcs)
    if toplevel and "releases" in incs:
        release = _release_json(
            recording, media="media" in incs, group="release-groups" in incs, credit=credit
        )
        data["releases"] = [release]
    return data
