"""The MusicBrainz client end to end against the fake MusicBrainz over loopback: parsing,
errors, the shared rate limit that keeps it under MusicBrainz's 503, and its breaker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from soulspot_jobs.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerError,
    CircuitState,
    MemoryBackend,
)
from soulspot_jobs.clients.musicbrainz import (
    LUCENE_SPECIALS,
    SERVICE,
    CircuitBreakerMusicBrainzClient,
    MusicBrainzClient,
    Recording,
    Release,
    best_match,
    escape_lucene,
    shared_rate_limiter,
)
from soulspot_jobs.errors import (
    NotFoundError,
    RetryLater,
    ServiceUnavailableError,
    UpstreamRequestError,
    is_service_failure,
)
from soulspot_jobs.fakes.catalog import CATALOG, CatalogTrack
from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.rate_limit import RedisRateLimiter
from soulspot_jobs.settings import MusicBrainzSettings

TRACK = CATALOG[0]
UNKNOWN_MBID = "00000000-0000-4000-8000-000000000000"
#: Seconds between requests in the rate-limit tests that need not run at MusicBrainz's pace.
QUICK_INTERVAL = 0.25


def settings_for(fake: FakeMusicBrainz, **fields: object) -> MusicBrainzSettings:
    return MusicBrainzSettings(url=fake.url, timeout=5, **fields)


@pytest.fixture
def fake() -> Iterator[FakeMusicBrainz]:
    """A fake without its rate rule: these tests are about answers, not pace."""
    with FakeMusicBrainz(min_interval=0) as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def client(fake: FakeMusicBrainz) -> Iterator[MusicBrainzClient]:
    client = MusicBrainzClient(settings_for(fake))
    yield client
    client.close()


# -- escape_lucene ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("Around the World", "Around the World"),
        ("AC/DC", r"AC\/DC"),
        ("Rock && Roll || Not", r"Rock \&\& Roll \|\| Not"),
        ('Say "Hi" (Live!)', r"Say \"Hi\" \(Live\!\)"),
        ("a+b-c^d~e*f?g:h", r"a\+b\-c\^d\~e\*f\?g\:h"),
        ("[x]{y}", r"\[x\]\{y\}"),
        ("back\\slash", r"back\\slash"),
    ],
)
def test_escape_lucene_puts_a_backslash_before_each_special(text: str, escaped: str) -> None:
    assert escape_lucene(text) == escaped


def _unescaped_specials(escaped: str) -> list[int]:
    """Positions of special characters in ``escaped`` that no backslash escapes."""
    found, i = [], 0
    while i < len(escaped):
        if escaped[i] == "\\" and i + 1 < len(escaped):
            i += 2
        else:
            if escaped[i] in LUCENE_SPECIALS:
                found.append(i)
            i += 1
    return found


@given(st.text())
def test_escaped_text_has_no_unescaped_special_and_reads_back_as_the_text(text: str) -> None:
    escaped = escape_lucene(text)
    assert _unescaped_specials(escaped) == []
    read_back, i = [], 0
    while i < len(escaped):
        if escaped[i] == "\\":
            i += 1
        read_back.append(escaped[i])
        i += 1
    assert "".join(read_back) == text


# -- answers ------------------------------------------------------------------------------------


def test_a_search_finds_the_exact_recording_first(client: MusicBrainzClient) -> None:
    # When the catalog's first track is searched
    recordings = client.search_recordings(TRACK.artist, TRACK.title)
    # Then the exact recording comes first, fully parsed
    first = recordings[0]
    assert first.id == TRACK.mbid
    assert first.score == 100
    assert first.title == TRACK.title
    assert first.length_ms == TRACK.duration_ms
    assert first.artist_credit == TRACK.artist
    assert len(first.artist_ids) == 1
    assert first.first_release_date == TRACK.release_date
    assert first.isrcs == (TRACK.isrc,)
    assert first.releases[0] == Release(
        id=TRACK.release_mbid,
        title=TRACK.album,
        status="Official",
        date=TRACK.release_date,
        country="GB",
        primary_type="Album",
    )
    # And lower-scored near matches follow
    assert any(r.score is not None and r.score < 100 for r in recordings[1:])


def test_a_search_respects_the_limit(client: MusicBrainzClient) -> None:
    assert len(client.search_recordings(TRACK.artist, TRACK.title, limit=2)) == 2


def test_a_search_for_titles_full_of_lucene_specials_finds_them() -> None:
    # Given a MusicBrainz knowing a song whose names are full of query syntax
    odd = CatalogTrack(
        "AC/DC", 'T.N.T. (Live!) "Raw" [Edit]: 1+1?', "If You Want Blood", 214_000,
        "AUAP07900014", "0" * 22, "11111111-2222-4333-8444-555555555555",
        "66666666-7777-4888-9999-000000000000", "1978-10-13",
    )  # fmt: skip
    with FakeMusicBrainz(catalog=[odd], min_interval=0) as fake:
        client = MusicBrainzClient(settings_for(fake))
        # When the client searches for it
        recordings = client.search_recordings(odd.artist, odd.title)
        client.close()
    # Then it is found, as the exact match
    assert recordings[0].id == odd.mbid
    assert recordings[0].score == 100


def test_a_search_needs_an_artist_and_a_title(client: MusicBrainzClient) -> None:
    with pytest.raises(UpstreamRequestError):
        client.search_recordings(" ", TRACK.title)


def test_get_recording_returns_artists_releases_and_isrcs(client: MusicBrainzClient) -> None:
    recording = client.get_recording(TRACK.mbid)
    assert recording.score is None
    assert recording.artist_credit == TRACK.artist
    assert recording.isrcs == (TRACK.isrc,)
    assert recording.releases[0].title == TRACK.album


def test_get_recording_asks_for_release_groups_so_the_release_type_is_known(
    client: MusicBrainzClient,
) -> None:
    # When a recording is looked up (the fake, like MusicBrainz, sends a release's
    # release-group only with inc=release-groups)
    release = client.get_recording(TRACK.mbid).releases[0]
    # Then its release says what it is
    assert release.primary_type == "Album"


def test_lookup_isrc_returns_the_recordings_carrying_it(client: MusicBrainzClient) -> None:
    [recording] = client.lookup_isrc(TRACK.isrc)
    assert recording.id == TRACK.mbid
    assert recording.artist_credit == TRACK.artist
    assert TRACK.isrc in recording.isrcs


def test_lookup_isrc_gives_recordings_without_releases(client: MusicBrainzClient) -> None:
    # When an ISRC is looked up (the fake refuses inc values an ISRC lookup does not take)
    [recording] = client.lookup_isrc(TRACK.isrc)
    # Then the recording has no releases: MusicBrainz lists none there
    assert recording.releases == ()


@pytest.mark.parametrize(
    "call",
    [lambda c: c.get_recording(UNKNOWN_MBID), lambda c: c.lookup_isrc("XXAAA0000000")],
    ids=["mbid", "isrc"],
)
def test_an_unknown_id_raises_not_found(client: MusicBrainzClient, call) -> None:
    with pytest.raises(NotFoundError) as missing:
        call(client)
    assert missing.value.status == 404
    assert not is_service_failure(missing.value)


def test_a_generic_user_agent_is_refused_as_the_jobs_own_error(fake: FakeMusicBrainz) -> None:
    # Given a client configured to introduce itself like a bare HTTP library
    client = MusicBrainzClient(settings_for(fake, app_name="python-httpx", app_version="0.28"))
    # When it searches
    with pytest.raises(UpstreamRequestError) as refused:
        client.search_recordings(TRACK.artist, TRACK.title)
    client.close()
    # Then MusicBrainz's 403 is the job's error, not the service's
    assert refused.value.status == 403
    assert not is_service_failure(refused.value)


def test_the_client_introduces_itself_with_the_configured_user_agent(
    fake: FakeMusicBrainz, client: MusicBrainzClient
) -> None:
    # When the client asks anything, the fake (which refuses generic agents) serves it
    assert client.get_recording(TRACK.mbid).id == TRACK.mbid
    assert len(fake.accepted_times) == 1


@pytest.mark.parametrize(
    "fault",
    [
        lambda f: f.faults.outage(30, mode="503"),
        lambda f: f.faults.outage(30, mode="refuse"),
        lambda f: f.faults.fail(1, 500),
        lambda f: f.faults.rate_limit(1, 3),
    ],
    ids=["outage-503", "outage-refuse", "500", "429"],
)
def test_outages_raise_service_unavailable(
    fake: FakeMusicBrainz, client: MusicBrainzClient, fault
) -> None:
    fault(fake)
    with pytest.raises(ServiceUnavailableError) as down:
        client.search_recordings(TRACK.artist, TRACK.title)
    assert is_service_failure(down.value)


@pytest.mark.parametrize("kind", ["html", "truncated"])
def test_a_200_that_is_not_json_is_a_service_failure(fake: FakeMusicBrainz, kind: str) -> None:
    # Given a guarded client, and a proxy spoiling MusicBrainz's next answer
    client = CircuitBreakerMusicBrainzClient(
        MusicBrainzClient(settings_for(fake)), backend=MemoryBackend()
    )
    fake.faults.bad_body(1, kind)
    # When it looks a recording up
    with pytest.raises(ServiceUnavailableError) as raised:
        client.get_recording(TRACK.mbid)
    client.close()
    # Then the service misbehaved: counted by the breaker
    assert is_service_failure(raised.value)
    assert f"GET /ws/2/recording/{TRACK.mbid} answered 200 with a body that is not JSON" in str(
        raised.value
    )
    assert client.circuit_breaker.stats.failure_count == 1


# -- best_match ----------------------------------------------------------------------------------


def recording(id: str, score: int | None, length_ms: int | None) -> Recording:
    return Recording(id, score, "Title", length_ms, "Artist", ("a",), None, (), ())


def test_best_match_prefers_the_higher_score_over_a_closer_length() -> None:
    candidates = [recording("near", 90, 300_000), recording("exact", 100, 330_000)]
    assert best_match(candidates, duration_ms=300_000).id == "exact"


def test_best_match_breaks_a_score_tie_by_the_closest_length() -> None:
    candidates = [
        recording("long", 100, 340_000),
        recording("unknown", 100, None),
        recording("close", 100, 301_000),
    ]
    assert best_match(candidates, duration_ms=300_000).id == "close"


def test_best_match_without_a_duration_keeps_musicbrainz_order_among_equals() -> None:
    candidates = [recording("first", 100, 1), recording("second", 100, 300_000)]
    assert best_match(candidates).id == "first"


def test_best_match_prefers_a_known_length_to_an_unknown_one_on_a_tie() -> None:
    candidates = [recording("unknown", 100, None), recording("far", 100, 900_000)]
    assert best_match(candidates, duration_ms=300_000).id == "far"


def test_best_match_ignores_recordings_below_min_score() -> None:
    candidates = [recording("weak", 79, 300_000)]
    assert best_match(candidates, duration_ms=300_000) is None
    assert best_match(candidates, min_score=70).id == "weak"
    assert best_match([]) is None


def test_best_match_counts_a_looked_up_recording_as_a_full_score() -> None:
    candidates = [recording("searched", 95, 300_000), recording("looked-up", None, 300_000)]
    assert best_match(candidates).id == "looked-up"


def test_best_match_picks_the_version_whose_length_fits(client: MusicBrainzClient) -> None:
    # Given a search answering the album recording and the same song on a compilation
    recordings = client.search_recordings(TRACK.artist, TRACK.title)
    # When the track's length is known, the album recording is chosen; a length nearer the
    # compilation's picks that one
    assert best_match(recordings, duration_ms=TRACK.duration_ms).id == TRACK.mbid
    compilation = best_match(recordings, duration_ms=TRACK.duration_ms + 4_000)
    assert compilation.releases[0].primary_type == "Compilation"


# -- the shared rate limit ---------------------------------------------------------------------


def test_with_the_shared_limiter_calls_at_musicbrainz_pace_get_no_503(
    redis_client: redis.Redis,
) -> None:
    # Given MusicBrainz's real rule (1 request per second) and a client behind the shared
    # Redis limiter at the same pace
    with FakeMusicBrainz(min_interval=1.0) as fake:
        settings = settings_for(fake, min_interval=1.0)
        client = MusicBrainzClient(settings, limiter=shared_rate_limiter(redis_client, settings))
        # When it makes four calls in a row
        client.search_recordings(TRACK.artist, TRACK.title)
        client.get_recording(TRACK.mbid)
        client.lookup_isrc(TRACK.isrc)
        client.search_recordings(CATALOG[1].artist, CATALOG[1].title)
        client.close()
    # Then none was refused, and they arrived a second apart (within the fake's jitter margin)
    assert fake.rate_limited == 0
    times = fake.accepted_times
    assert len(times) == 4
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 1.0 - fake.tolerance
    assert times[-1] - times[0] >= 3.0 - fake.tolerance


def test_without_a_limiter_back_to_back_calls_get_musicbrainz_503() -> None:
    # Given MusicBrainz's rate rule (long, so a slow machine's calls are still back to back)
    # and a client without a limiter
    with FakeMusicBrainz(min_interval=30) as fake:
        client = MusicBrainzClient(settings_for(fake))
        # When it makes two calls back to back
        client.get_recording(TRACK.mbid)
        with pytest.raises(ServiceUnavailableError) as refused:
            client.get_recording(TRACK.mbid)
        client.close()
    # Then the second is refused with 503, a service failure without Retry-After
    assert refused.value.status == 503
    assert refused.value.retry_after is None
    assert fake.rate_limited == 1


def test_a_rate_limit_503_carries_retry_after_when_musicbrainz_sends_one() -> None:
    # A long interval: the second call is refused however slowly the machine runs it
    with FakeMusicBrainz(min_interval=30, retry_after=3) as fake:
        client = MusicBrainzClient(settings_for(fake))
        client.get_recording(TRACK.mbid)
        with pytest.raises(ServiceUnavailableError) as refused:
            client.get_recording(TRACK.mbid)
        client.close()
    assert refused.value.retry_after == 3.0


def test_a_busy_limiter_defers_the_call_before_anything_is_sent(
    redis_client: redis.Redis,
) -> None:
    # Given a client whose limiter slot is further away than it may wait
    with FakeMusicBrainz(min_interval=QUICK_INTERVAL) as fake:
        limiter = RedisRateLimiter(redis_client, "test:mb", QUICK_INTERVAL, service=SERVICE)
        client = MusicBrainzClient(settings_for(fake), limiter=limiter, max_wait=0.05)
        client.get_recording(TRACK.mbid)
        # When it calls again at once
        with pytest.raises(RetryLater) as deferred:
            client.get_recording(TRACK.mbid)
        client.close()
    # Then the job is told to retry later, and MusicBrainz never saw the second request
    assert deferred.value.service == SERVICE
    assert 0.05 < deferred.value.retry_after <= QUICK_INTERVAL
    assert len(fake.requests) == 1


# -- behind the circuit breaker ------------------------------------------------------------------


@pytest.fixture
def guarded(client: MusicBrainzClient) -> CircuitBreakerMusicBrainzClient:
    """The client behind a breaker that opens on the first service failure."""
    breaker = CircuitBreaker(
        SERVICE,
        CircuitBreakerConfig(failure_threshold=1),
        backend=MemoryBackend(),
        is_failure=is_service_failure,
    )
    return CircuitBreakerMusicBrainzClient(client, breaker=breaker)


def test_the_breaker_is_named_after_the_service() -> None:
    assert CircuitBreakerMusicBrainzClient.service == "musicbrainz-api"


def test_a_not_found_fails_only_that_call_and_never_trips_the_breaker(
    guarded: CircuitBreakerMusicBrainzClient,
) -> None:
    # Given a breaker that would open on a single failure
    # When lookups of unknown ids fail, again and again
    for _ in range(3):
        with pytest.raises(NotFoundError):
            guarded.get_recording(UNKNOWN_MBID)
    # Then the circuit stays CLOSED and the next call goes through
    assert guarded.circuit_breaker.state == CircuitState.CLOSED
    assert guarded.get_recording(TRACK.mbid).id == TRACK.mbid


def test_a_service_failure_opens_the_breaker(
    fake: FakeMusicBrainz, guarded: CircuitBreakerMusicBrainzClient
) -> None:
    # Given MusicBrainz answers 503 once
    fake.faults.fail(1, 503)
    with pytest.raises(ServiceUnavailableError):
        guarded.search_recordings(TRACK.artist, TRACK.title)
    # When the next call comes, then the open circuit refuses it without asking MusicBrainz
    with pytest.raises(CircuitBreakerError):
        guarded.search_recordings(TRACK.artist, TRACK.title)
    assert len(fake.requests) == 1
