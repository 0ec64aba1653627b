"""The slskd client end to end against the fake slskd over loopback, alone and behind the
``slskd-api`` circuit breaker; and the ranking of candidate files."""

from __future__ import annotations

import logging
import random
import socket
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from soulspot_jobs.circuit_breaker import (
    Backend,
    CircuitBreakerError,
    CircuitState,
    MemoryBackend,
    RedisBackend,
)
from soulspot_jobs.clients.slskd import (
    SERVICE,
    Candidate,
    CircuitBreakerSlskdClient,
    EnqueueFailure,
    PeerResponse,
    Search,
    SharedFile,
    SlskdClient,
    Transfer,
    choose_best,
    parse_failed,
)
from soulspot_jobs.errors import (
    NotFoundError,
    PeerUnavailableError,
    RetryLater,
    ServiceOutage,
    ServiceUnavailableError,
    UnauthorizedError,
    UpstreamRequestError,
    is_service_failure,
)
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.slskd import FakeSlskd
from soulspot_jobs.settings import SlskdSettings
from tests.polling import poll

KEY = "slskd-key-0f3c9a7e51d24b86"
TRACK = CATALOG[1]
QUERY = f"{TRACK.artist} - {TRACK.title}"


@pytest.fixture
def fake() -> Iterator[FakeSlskd]:
    with FakeSlskd(api_key=KEY) as server:
        yield server


def settings_for(fake: FakeSlskd, key: str = KEY, **values: Any) -> SlskdSettings:
    return SlskdSettings(url=fake.url, api_key=key, timeout=5, **values)


@pytest.fixture
def client(fake: FakeSlskd) -> Iterator[SlskdClient]:
    client = SlskdClient(settings_for(fake))
    yield client
    client.close()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The breaker's store: in this process, or in the session's Redis."""
    if request.param == "memory":
        yield MemoryBackend()
        return
    redis_backend = RedisBackend.from_url(request.getfixturevalue("redis_url"))
    yield redis_backend
    redis_backend.close()
    redis_backend.client.close()


@pytest.fixture
def guarded(client: SlskdClient, backend: Backend) -> CircuitBreakerSlskdClient:
    return CircuitBreakerSlskdClient(client, backend=backend)


def responses_for(client: SlskdClient, query: str = QUERY) -> list[PeerResponse]:
    search = client.start_search(query)
    poll(lambda: client.get_search(search.id), lambda s: s.is_complete)
    return client.get_responses(search.id)


def wait_until_refusing(fake: FakeSlskd) -> None:
    """Wait until the fake's listening socket is closed (an outage in "refuse" mode)."""

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", fake.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        return False

    assert poll(refused, bool)


# -- searches ----------------------------------------------------------------------------------


def test_a_search_starts_in_progress_and_completes_with_peer_responses(
    client: SlskdClient,
) -> None:
    # Given a search for a catalog track
    search = client.start_search(QUERY)
    # Then it is running
    assert (search.state, search.is_complete, search.search_text) == ("InProgress", False, QUERY)
    # When it has run its course
    done = poll(lambda: client.get_search(search.id), lambda s: s.is_complete)
    # Then it completed with the fake's four peers
    assert done.id == search.id
    assert done.state == "Completed, ResponseLimitReached"
    assert done.response_count == 4
    assert done.file_count == len([f for r in client.get_responses(search.id) for f in r.files])


def test_a_search_start_sends_its_id_and_the_timeout_in_milliseconds(fake: FakeSlskd) -> None:
    # Given a client whose searches last 2.5 seconds
    client = SlskdClient(settings_for(fake, search_timeout=2.5))
    search_id = str(uuid.uuid4())
    # When it starts a search with its own ID
    search = client.start_search(QUERY, search_id=search_id)
    client.close()
    # Then slskd got the ID, the text and the limits, with the timeout in milliseconds
    assert search.id == search_id
    assert fake.search_requests == [
        {
            "id": search_id,
            "searchText": QUERY,
            "searchTimeout": 2500,
            "responseLimit": 100,
            "fileLimit": 10000,
            "filterResponses": True,
        }
    ]


def test_responses_are_parsed_with_missing_metadata_as_none(client: SlskdClient) -> None:
    # Given the responses to a completed search
    responses = {response.username: response for response in responses_for(client)}
    # Then the FLAC has depth and rate but no bit rate; the MP3s a bit rate only
    flac = responses["lossless_lover"].files[0]
    assert flac.filename.endswith(f"\\{TRACK.album}\\02 - {TRACK.title}.flac")
    assert (flac.extension, flac.bit_depth, flac.sample_rate, flac.bit_rate) == (
        "flac",
        16,
        44100,
        None,
    )
    assert flac.length == TRACK.duration_ms // 1000
    # And an extension slskd sent empty comes from the file name
    mp3 = responses["mp3 archive"].files[0]
    assert (mp3.extension, mp3.bit_rate, mp3.bit_depth) == ("mp3", 320, None)
    # And the peers' load is read, locked files left out
    slow = responses["slow_peer"]
    assert (slow.has_free_upload_slot, slow.queue_length, slow.upload_speed) == (False, 37, 15000)
    assert [file.extension for file in slow.files] == ["mp3"]


def test_an_unknown_query_completes_timed_out_without_responses(fake: FakeSlskd) -> None:
    """Soulseek.NET ends a search that gets no response after its ``searchTimeout``."""
    client = SlskdClient(settings_for(fake, search_timeout=0.5))
    search = client.start_search("Nobody - Nothing At All")
    done = poll(lambda: client.get_search(search.id), lambda s: s.is_complete)
    assert done.state == "Completed, TimedOut"
    assert client.get_responses(search.id) == []
    client.close()


def test_a_search_read_complete_before_slskd_stored_its_end_is_not_ended_yet(
    fake: FakeSlskd, client: SlskdClient
) -> None:
    # Given an slskd that marks searches complete 1 s before it stores their responses
    fake.early_complete(1.0)
    search = client.start_search(QUERY)
    # When the search first reads complete
    early = poll(lambda: client.get_search(search.id), lambda s: s.is_complete)
    # Then it has no end yet and its responses read empty
    assert (early.is_complete, early.ended, early.ended_at) == (True, False, None)
    assert early.response_count == 4
    assert client.get_responses(search.id) == []
    # And once slskd stored its end, every response is there
    ended = poll(lambda: client.get_search(search.id), lambda s: s.ended)
    assert ended.ended_at is not None
    assert len(client.get_responses(search.id)) == 4


def test_an_unknown_search_raises_not_found(client: SlskdClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.get_search(str(uuid.uuid4()))
    assert (caught.value.service, caught.value.status) == (SERVICE, 404)


# -- choosing a file ---------------------------------------------------------------------------


def test_the_best_candidates_from_the_fake_rank_flac_then_free_fast_peers(
    client: SlskdClient,
) -> None:
    # Given the fake's peers' answers
    responses = responses_for(client)
    # When the candidates are ranked
    ranked = choose_best(responses, max_candidates=10)
    # Then FLAC comes first, the free 320 before the busy 320, the 128 last; no cover, no cue
    assert [(c.username, c.extension, c.lossless) for c in ranked] == [
        ("lossless_lover", "flac", True),
        ("mp3 archive", "mp3", False),
        ("slow_peer", "mp3", False),
        ("old_rips", "mp3", False),
    ]
    assert choose_best(responses, max_candidates=2) == ranked[:2]


def shared(filename: str, **values: Any) -> SharedFile:
    fields = {"size": 1000, "bit_rate": None, "bit_depth": None, "sample_rate": None}
    fields.update(values)
    return SharedFile(
        filename=filename, extension=filename.rsplit(".", 1)[-1], length=200, **fields
    )


def peer(username: str, *files: SharedFile, free: bool = True, queue: int = 0, speed: int = 1000):
    return PeerResponse(username, free, queue, speed, files)


def best_names(*responses: PeerResponse) -> list[str]:
    return [c.filename for c in choose_best(responses, max_candidates=10)]


def test_lossless_beats_any_lossy_bit_rate_and_a_bit_depth_makes_an_m4a_lossless() -> None:
    ranked = best_names(
        peer("a", shared("a.mp3", bit_rate=320), shared("b.flac")),
        peer("b", shared("c.m4a", bit_depth=16, sample_rate=44100), shared("d.m4a", bit_rate=256)),
    )
    assert ranked == ["c.m4a", "b.flac", "a.mp3", "d.m4a"]


def test_higher_resolution_beats_a_free_slot_and_higher_bit_rate_beats_a_short_queue() -> None:
    ranked = best_names(
        peer(
            "free",
            shared("cd.flac", bit_depth=16, sample_rate=44100),
            shared("low.mp3", bit_rate=192),
        ),
        peer(
            "busy",
            shared("hires.flac", bit_depth=24, sample_rate=96000),
            shared("high.mp3", bit_rate=320),
            free=False,
            queue=50,
        ),
    )
    assert ranked == ["hires.flac", "cd.flac", "high.mp3", "low.mp3"]


def test_at_equal_quality_free_slot_then_short_queue_then_fast_peer_win() -> None:
    ranked = best_names(
        peer("busy", shared("busy.mp3", bit_rate=320), free=False),
        peer("queued", shared("queued.mp3", bit_rate=320), queue=4),
        peer("slow", shared("slow.mp3", bit_rate=320), speed=10),
        peer("fast", shared("fast.mp3", bit_rate=320), speed=10_000),
    )
    assert ranked == ["fast.mp3", "slow.mp3", "queued.mp3", "busy.mp3"]


def test_only_audio_files_are_candidates_and_at_most_max_candidates() -> None:
    responses = [peer("a", shared("cover.jpg"), shared("x.cue"), shared("a.ogg"), shared("b.opus"))]
    assert [c.extension for c in choose_best(responses, max_candidates=10)] == ["ogg", "opus"]
    assert len(choose_best(responses, max_candidates=1)) == 1
    assert choose_best([], max_candidates=3) == []


def test_a_file_offered_twice_by_one_user_is_listed_once_at_its_best_rank() -> None:
    ranked = choose_best(
        [
            peer("a", shared("x.mp3", bit_rate=320), free=False),
            peer("b", shared("y.mp3", bit_rate=320), queue=1),
            peer("a", shared("x.mp3", bit_rate=320)),
        ],
        max_candidates=10,
    )
    assert [(c.username, c.filename) for c in ranked] == [("a", "x.mp3"), ("b", "y.mp3")]


AUDIO = ["flac", "mp3", "m4a", "wav", "ogg"]
EXTENSIONS = [*AUDIO, "jpg", "txt"]
files_strategy = st.builds(
    lambda name, ext, size, rate, depth: shared(
        f"@@s\\Music\\{name}.{ext}",
        size=size,
        bit_rate=rate,
        bit_depth=depth,
        sample_rate=44100 if depth else None,
    ),
    st.text("abc", min_size=1, max_size=3),
    st.sampled_from(EXTENSIONS),
    st.integers(0, 10),
    st.sampled_from([None, 128, 320]),
    st.sampled_from([None, 16, 24]),
)
responses_strategy = st.lists(
    st.builds(
        lambda name, files, free, queue, speed: PeerResponse(name, free, queue, speed, files),
        st.text("xyz", min_size=1, max_size=2),
        st.lists(files_strategy, max_size=4).map(tuple),
        st.booleans(),
        st.integers(0, 3),
        st.integers(0, 3),
    ),
    max_size=5,
)


@given(responses_strategy, st.randoms(use_true_random=False), st.integers(1, 30))
def test_the_ranking_is_total_whatever_order_the_peers_answered_in(
    responses: list[PeerResponse], shuffler: random.Random, max_candidates: int
) -> None:
    # Given the same answers in another order, each peer's files shuffled too
    shuffled = [
        PeerResponse(
            r.username,
            r.has_free_upload_slot,
            r.queue_length,
            r.upload_speed,
            tuple(shuffler.sample(r.files, len(r.files))),
        )
        for r in shuffler.sample(responses, len(responses))
    ]
    # When both are ranked
    ranked = choose_best(responses, max_candidates=max_candidates)
    # Then the rankings are the same, lossless before lossy, audio only, cut at max_candidates
    assert choose_best(shuffled, max_candidates=max_candidates) == ranked
    audio = {(r.username, f.filename) for r in responses for f in r.files if f.extension in AUDIO}
    assert len(ranked) == min(max_candidates, len(audio))
    lossless = [c.lossless for c in ranked]
    assert lossless == sorted(lossless, reverse=True)
    assert all(isinstance(c, Candidate) for c in ranked)


# -- transfer states ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("Completed, Succeeded", (True, False, False, False)),
        ("Completed,Succeeded", (True, False, False, False)),
        ("Succeeded, Completed", (True, False, False, False)),
        ("Completed, Errored", (False, True, False, False)),
        ("Completed, Cancelled", (False, True, False, False)),
        ("Completed, TimedOut", (False, True, False, False)),
        ("Completed, Rejected", (False, True, False, False)),
        ("Completed, Aborted", (False, True, False, False)),
        ("Requested", (False, False, True, False)),
        ("Queued", (False, False, True, False)),
        ("Queued, Locally", (False, False, True, False)),
        ("Queued,  Remotely", (False, False, True, False)),
        ("Initializing", (False, False, False, True)),
        ("InProgress", (False, False, False, True)),
        ("", (False, False, False, False)),
    ],
)
def test_a_transfer_state_reads_as_succeeded_failed_waiting_or_active(
    state: str, expected: tuple[bool, bool, bool, bool]
) -> None:
    transfer = Transfer("id", "user", "file", 1, state, 0, 0.0, None)
    assert (transfer.succeeded, transfer.failed, transfer.waiting, transfer.active) == expected


# -- downloads ---------------------------------------------------------------------------------


def best_candidate(client: SlskdClient) -> Candidate:
    return choose_best(responses_for(client), max_candidates=1)[0]


def test_an_enqueued_download_is_polled_to_success(client: SlskdClient) -> None:
    # Given the best candidate, enqueued
    candidate = best_candidate(client)
    transfer = client.enqueue_download(candidate.username, candidate.filename, candidate.size)
    assert transfer.waiting
    assert (transfer.username, transfer.filename) == (candidate.username, candidate.filename)
    # When it is polled until it ends
    done = poll(lambda: client.get_transfer(transfer.username, transfer.id), lambda t: t.done)
    # Then it succeeded with every byte
    assert done.succeeded and not done.failed
    assert (done.bytes_transferred, done.percent_complete) == (candidate.size, 100.0)


def test_a_user_name_with_a_space_and_a_backslashed_file_name_travel_intact(
    client: SlskdClient,
) -> None:
    responses = {r.username: r for r in responses_for(client)}
    file = responses["mp3 archive"].files[0]
    transfer = client.enqueue_download("mp3 archive", file.filename, file.size)
    assert client.get_transfer("mp3 archive", transfer.id).filename == file.filename


def test_a_failed_download_reports_its_state_and_slskds_reason(
    fake: FakeSlskd, client: SlskdClient
) -> None:
    # Given the next download fails
    fake.fail_downloads(1, state="Completed, TimedOut", exception="Transfer failed: timed out")
    candidate = best_candidate(client)
    # When it runs to its end
    transfer = client.enqueue_download(candidate.username, candidate.filename, candidate.size)
    done = poll(lambda: client.get_transfer(transfer.username, transfer.id), lambda t: t.done)
    # Then it failed, with the reason slskd gave
    assert done.failed and not done.succeeded
    assert (done.state, done.exception) == ("Completed, TimedOut", "Transfer failed: timed out")


def test_a_new_download_waits_queued_locally_and_its_missing_fields_read_as_empty(
    client: SlskdClient,
) -> None:
    # Given the best candidate, enqueued
    candidate = best_candidate(client)
    transfer = client.enqueue_download(candidate.username, candidate.filename, candidate.size)
    # Then it starts in slskd's first state, with no exception and nothing transferred
    assert transfer.state == "Queued, Locally"
    assert transfer.waiting and not transfer.active and not transfer.done
    assert (transfer.exception, transfer.bytes_transferred) == (None, 0)


def test_a_transfer_or_search_with_every_null_field_left_out_still_parses() -> None:
    # Given answers holding nothing but what slskd never leaves out, then they read as empty
    transfer = Transfer.from_json({"id": "t1"})
    assert (transfer.state, transfer.size, transfer.exception, transfer.done) == (
        "",
        0,
        None,
        False,
    )
    search = Search.from_json({"id": "s1", "state": "Completed, TimedOut"})
    assert (search.is_complete, search.ended_at, search.ended, search.response_count) == (
        True,
        None,
        False,
        0,
    )


def test_an_older_slskds_empty_enqueue_answer_is_resolved_from_the_users_downloads(
    fake: FakeSlskd, client: SlskdClient
) -> None:
    # Given an slskd answering enqueues with an empty 201
    fake.legacy_enqueue = True
    candidate = best_candidate(client)
    # When a download is enqueued
    transfer = client.enqueue_download(candidate.username, candidate.filename, candidate.size)
    # Then the client found the transfer in the peer's list of downloads
    assert ("GET", f"/api/v0/transfers/downloads/{candidate.username}") in fake.requests
    assert client.get_transfer(candidate.username, transfer.id).filename == candidate.filename


@pytest.mark.parametrize("version", ["0.26", "0.25", "0.24", "0.23"])
def test_enqueuing_a_file_already_downloading_follows_the_existing_transfer(
    fake: FakeSlskd, client: SlskdClient, version: str
) -> None:
    # Given a download in progress on an slskd of that version
    fake.version = version
    fake.transfer_duration = 60.0
    candidate = best_candidate(client)
    first = client.enqueue_download(candidate.username, candidate.filename, candidate.size)
    # When the same file is enqueued again (slskd skips it: "Already in progress")
    again = client.enqueue_download(candidate.username, candidate.filename, candidate.size)
    # Then the client follows the transfer slskd already has, with no duplicate
    assert again.id == first.id
    assert not again.done


def test_a_file_slskd_lists_as_failed_without_a_transfer_is_the_peers_failure(
    fake: FakeSlskd, client: SlskdClient
) -> None:
    # Given slskd fails to add the next file (the batches endpoint lists it in "failures")
    candidate = best_candidate(client)
    fake.fail_enqueues(1)
    # When it is enqueued
    with pytest.raises(PeerUnavailableError) as caught:
        client.enqueue_download(candidate.username, candidate.filename, candidate.size)
    # Then it is this candidate's failure, with what slskd said, and no service failure
    assert caught.value.username == candidate.username
    assert caught.value.reason.startswith("Error: ")
    assert "slskd lists no transfer of" in caught.value.reason
    assert not is_service_failure(caught.value)


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("offline", "User lossless_lover appears to be offline"),
        ("unreachable", "Failed to connect to user lossless_lover: Failed to establish"),
        ("timeout", "The wait timed out after 5000 milliseconds"),
    ],
)
def test_an_enqueue_from_an_unavailable_peer_raises_peer_unavailable_not_a_service_failure(
    fake: FakeSlskd, client: SlskdClient, reason: str, message: str
) -> None:
    # Given the best peer gone (slskd's batches endpoint answers an offline peer 404 and any
    # other peer failure 500, each with the library's message: TransfersController.cs)
    candidate = best_candidate(client)
    fake.peers_offline(candidate.username, reason=reason)
    # When a file is enqueued from it
    with pytest.raises(PeerUnavailableError) as caught:
        client.enqueue_download(candidate.username, candidate.filename, candidate.size)
    # Then it is the peer's failure, with slskd's reason as plain text
    error = caught.value
    status = 404 if reason == "offline" else 500
    assert (error.username, error.status, error.service) == (candidate.username, status, SERVICE)
    assert error.reason.startswith(message)
    assert isinstance(error, UpstreamRequestError) and not is_service_failure(error)


def test_an_enqueue_answered_500_for_another_reason_is_a_service_failure(
    fake: FakeSlskd, client: SlskdClient
) -> None:
    # Given slskd failing on its own (a 500 whose message blames no peer)
    candidate = best_candidate(client)
    fake.faults.fail(1, 500)
    # When a download is enqueued, then it is slskd's failure, for its breaker to count
    with pytest.raises(ServiceUnavailableError) as caught:
        client.enqueue_download(candidate.username, candidate.filename, candidate.size)
    assert caught.value.status == 500 and is_service_failure(caught.value)


def test_an_enqueue_while_slskd_is_logged_out_of_soulseek_is_an_slskd_outage_not_the_peers(
    fake: FakeSlskd, client: SlskdClient
) -> None:
    """slskd's enqueue endpoints answer 500 with Soulseek.NET's "The server connection must be
    connected and logged in to fetch user endpoint" while it is not logged in
    (``TransfersController.EnqueueAsync``, ``SoulseekClient.GetUserEndPointAsync``)."""
    # Given a candidate found, then slskd logged out of Soulseek
    candidate = best_candidate(client)
    fake.logged_out(True)
    # When its file is enqueued
    with pytest.raises(ServiceOutage) as caught:
        client.enqueue_download(candidate.username, candidate.filename, candidate.size)
    # Then it is slskd's outage, with its reason, not the peer's failure
    error = caught.value
    assert not isinstance(error, PeerUnavailableError)
    assert (error.status, error.outage) == (500, "not logged in to Soulseek")
    assert "logged in to fetch user endpoint" in str(error)
    assert is_service_failure(error)


def test_an_enqueue_may_take_longer_than_the_client_timeout_while_slskd_reaches_the_peer(
    fake: FakeSlskd,
) -> None:
    # Given a client whose requests time out after half a second, and an slskd that takes a
    # second to reach a peer before it answers an enqueue
    client = SlskdClient(SlskdSettings(url=fake.url, api_key=KEY, timeout=0.5))
    candidate = best_candidate(client)
    fake.enqueue_delay = 1.0
    # When a download is enqueued
    transfer = client.enqueue_download(candidate.username, candidate.filename, candidate.size)
    client.close()
    # Then it was waited for, not counted as slskd timing out
    assert transfer.filename == candidate.filename


def test_the_failed_list_is_read_in_every_shape_without_crashing() -> None:
    # 0.24-0.25: file names (another string is kept as a reason); 0.26: {}; later: objects
    wanted = "@@a\\x.flac"
    assert parse_failed([wanted], requested=wanted) == [EnqueueFailure(wanted, None)]
    assert parse_failed(["Skipped: Already in progress"], requested=wanted) == [
        EnqueueFailure(None, "Skipped: Already in progress")
    ]
    assert parse_failed([{}], requested=wanted) == [EnqueueFailure(None, None)]
    assert parse_failed(
        [{"filename": wanted, "message": "Error: disk full"}, None, 7], requested=wanted
    ) == [EnqueueFailure(wanted, "Error: disk full"), EnqueueFailure(None, "7")]
    assert parse_failed(None, requested=wanted) == []
    assert parse_failed({"x": 1}, requested=wanted) == []


def test_a_cancelled_download_reads_as_failed(fake: FakeSlskd, client: SlskdClient) -> None:
    fake.transfer_duration = 60.0
    candidate = best_candidate(client)
    transfer = client.enqueue_download(candidate.username, candidate.filename, candidate.size)
    client.cancel_download(transfer.username, transfer.id)
    cancelled = client.get_transfer(transfer.username, transfer.id)
    assert cancelled.state == "Completed, Cancelled"
    assert cancelled.failed


# -- back-pressure and failures ----------------------------------------------------------------


def test_a_busy_search_start_raises_retry_later_not_a_service_failure(
    fake: FakeSlskd, client: SlskdClient
) -> None:
    # Given slskd is starting another search
    fake.busy_searches(1)
    # When a search starts
    with pytest.raises(RetryLater) as caught:
        client.start_search(QUERY)
    # Then the job is told to come back in a second
    assert (caught.value.service, caught.value.retry_after) == (SERVICE, 1.0)
    assert not isinstance(caught.value, ServiceUnavailableError)


def test_a_search_start_overlapping_another_raises_retry_later(
    fake: FakeSlskd, client: SlskdClient
) -> None:
    # Given a slow search start in flight
    fake.search_start_delay = 1.0
    first = threading.Thread(target=client.start_search, args=(QUERY,))
    first.start()
    poll(lambda: fake.search_starts_in_flight, lambda n: n == 1)
    # When another search starts meanwhile, then it is deferred
    with pytest.raises(RetryLater):
        client.start_search("Teardrop")
    first.join()


def test_a_429_with_retry_after_on_search_start_defers_that_long(
    fake: FakeSlskd, client: SlskdClient
) -> None:
    fake.faults.rate_limit(1, retry_after=4)
    with pytest.raises(RetryLater) as caught:
        client.start_search(QUERY)
    assert caught.value.retry_after == 4.0


def test_a_busy_enqueue_raises_retry_later(fake: FakeSlskd, client: SlskdClient) -> None:
    candidate = best_candidate(client)
    fake.busy_enqueues(1)
    with pytest.raises(RetryLater):
        client.enqueue_download(candidate.username, candidate.filename, candidate.size)


def test_a_429_on_reading_a_search_is_a_service_failure(
    fake: FakeSlskd, client: SlskdClient
) -> None:
    search = client.start_search(QUERY)
    fake.faults.rate_limit(1, retry_after=3)
    with pytest.raises(ServiceUnavailableError) as caught:
        client.get_search(search.id)
    assert (caught.value.status, caught.value.retry_after) == (429, 3.0)


@pytest.mark.parametrize("mode", ["refuse", "503"])
def test_an_outage_raises_service_unavailable(
    fake: FakeSlskd, client: SlskdClient, mode: str
) -> None:
    fake.faults.outage(30, mode=mode)
    if mode == "refuse":
        wait_until_refusing(fake)
    with pytest.raises(ServiceUnavailableError) as caught:
        client.start_search(QUERY)
    assert caught.value.service == SERVICE


def test_injected_server_errors_raise_service_unavailable(
    fake: FakeSlskd, client: SlskdClient
) -> None:
    fake.faults.fail(2, 500)
    for _ in range(2):
        with pytest.raises(ServiceUnavailableError) as caught:
            client.get_responses(str(uuid.uuid4()))
        assert caught.value.status == 500
    assert client.start_search(QUERY).state == "InProgress"


@pytest.mark.parametrize("kind", ["html", "truncated"])
@pytest.mark.parametrize("call", ["get_search", "get_responses", "enqueue_download"])
def test_a_200_that_is_not_json_is_a_service_failure(
    fake: FakeSlskd, client: SlskdClient, backend: Backend, kind: str, call: str
) -> None:
    # Given a guarded client, a search and a candidate, and a proxy spoiling slskd's next answer
    guarded = CircuitBreakerSlskdClient(client, backend=backend)
    search = client.start_search(QUERY)
    candidate = best_candidate(client)
    calls = {
        "get_search": lambda: guarded.get_search(search.id),
        "get_responses": lambda: guarded.get_responses(search.id),
        "enqueue_download": lambda: guarded.enqueue_download(
            candidate.username, candidate.filename, candidate.size
        ),
    }
    fake.faults.bad_body(1, kind)
    # When the client reads that answer
    with pytest.raises(ServiceUnavailableError) as raised:
        calls[call]()
    # Then slskd misbehaved: a service failure, counted by the breaker
    assert is_service_failure(raised.value)
    assert "with a body that is not JSON" in str(raised.value)
    assert guarded.circuit_breaker.stats.failure_count == 1


def test_a_wrong_api_key_blames_the_setting_without_showing_the_key(fake: FakeSlskd) -> None:
    """slskd answers 401, empty, to a request without a valid ``X-API-Key`` (its API-key
    authentication handler): the settings are wrong, not the job, and the message says which
    setting and never is empty."""
    wrong = "wrong-key-7d2e91b0c4a5"
    client = SlskdClient(settings_for(fake, key=wrong))
    with pytest.raises(UnauthorizedError) as caught:
        client.start_search(QUERY)
    client.close()
    assert caught.value.status == 401
    assert caught.value.variable == "SLSKD_API_KEY"
    assert caught.value.outage == "unauthorized (check SLSKD_API_KEY)"
    assert str(caught.value).endswith("answered 401 Unauthorized")
    assert wrong not in str(caught.value) and KEY not in str(caught.value)


# -- the circuit breaker -----------------------------------------------------------------------


def test_service_failures_open_the_breaker_which_then_spares_slskd(
    fake: FakeSlskd, guarded: CircuitBreakerSlskdClient
) -> None:
    # Given slskd failing as many times as the breaker tolerates
    threshold = guarded.circuit_breaker.config.failure_threshold
    assert guarded.circuit_breaker.name == SERVICE
    fake.faults.fail(threshold, 500)
    for _ in range(threshold):
        with pytest.raises(ServiceUnavailableError):
            guarded.start_search(QUERY)
    # Then the breaker is open
    assert guarded.circuit_breaker.state is CircuitState.OPEN
    # When the job calls again
    contacted = len(fake.requests)
    with pytest.raises(CircuitBreakerError) as caught:
        guarded.start_search(QUERY)
    # Then it is refused without a request to slskd
    assert caught.value.service_name == SERVICE
    assert len(fake.requests) == contacted
    # And the client can still be closed
    guarded.close()


def test_request_errors_and_back_pressure_never_open_the_breaker(
    fake: FakeSlskd, guarded: CircuitBreakerSlskdClient
) -> None:
    # Given more refusals than the breaker's threshold: 404s, busy starts and offline peers
    threshold = guarded.circuit_breaker.config.failure_threshold
    fake.busy_searches(threshold + 1)
    for _ in range(threshold + 1):
        with pytest.raises(NotFoundError):
            guarded.get_search(str(uuid.uuid4()))
        with pytest.raises(RetryLater):
            guarded.start_search(QUERY)
        with pytest.raises(PeerUnavailableError):
            guarded.enqueue_download("nobody", "@@flac\\gone.flac", 1)
    # Then the breaker stayed closed and calls still reach slskd
    assert guarded.circuit_breaker.state is CircuitState.CLOSED
    assert guarded.start_search(QUERY).state == "InProgress"


def test_peers_failing_more_often_than_the_threshold_never_open_the_breaker(
    fake: FakeSlskd, client: SlskdClient, guarded: CircuitBreakerSlskdClient
) -> None:
    # Given every peer offline, one way or another
    candidates = choose_best(responses_for(client), max_candidates=10)
    fake.peers_offline(*[c.username for c in candidates[:2]], reason="unreachable")
    fake.peers_offline(*[c.username for c in candidates[2:]], reason="timeout")
    # When more enqueues than the breaker's threshold fail on them
    for _ in range(guarded.circuit_breaker.config.failure_threshold + 1):
        for candidate in candidates:
            with pytest.raises(PeerUnavailableError):
                guarded.enqueue_download(candidate.username, candidate.filename, candidate.size)
    # Then the breaker counted nothing, while slskd's own 500s on enqueue do count
    assert guarded.circuit_breaker.stats.total_failures == 0
    fake.faults.fail(1, 500)
    with pytest.raises(ServiceUnavailableError):
        guarded.enqueue_download(candidates[0].username, candidates[0].filename, 1)
    assert guarded.circuit_breaker.stats.total_failures == 1
    assert guarded.circuit_breaker.state is CircuitState.CLOSED


def test_a_wrong_api_key_opens_the_breaker_at_once_with_the_setting_to_fix(
    fake: FakeSlskd, backend: Backend
) -> None:
    guarded = CircuitBreakerSlskdClient(SlskdClient(settings_for(fake, key="x")), backend=backend)
    with pytest.raises(UnauthorizedError):
        guarded.get_responses(str(uuid.uuid4()))
    guarded.close()
    stats = guarded.circuit_breaker.stats
    assert stats.state is CircuitState.OPEN
    assert stats.reason == "unauthorized (check SLSKD_API_KEY)"


# -- secrets -----------------------------------------------------------------------------------


def test_the_api_key_never_appears_in_errors_or_logs(
    fake: FakeSlskd, caplog: pytest.LogCaptureFixture
) -> None:
    # Given every log captured, down to httpx's debug lines
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-key-5be8f0d317c6"
    raised: list[BaseException] = []

    def attempt(call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as exc:
            raised.append(exc)

    guarded = CircuitBreakerSlskdClient(SlskdClient(settings_for(fake)), backend=MemoryBackend())
    wrong_client = SlskdClient(settings_for(fake, key=wrong))
    # When the clients meet every kind of failure, until the breaker opens
    with capture_logs() as structlog_events:
        structlog.get_logger("test").info("capture started")
        attempt(lambda: wrong_client.start_search(QUERY))
        attempt(lambda: guarded.get_search(str(uuid.uuid4())))
        fake.busy_searches(1)
        attempt(lambda: guarded.start_search(QUERY))
        fake.faults.outage(30, mode="503")
        for _ in range(guarded.circuit_breaker.config.failure_threshold + 1):
            attempt(lambda: guarded.start_search(QUERY))
        fake.faults.clear()
        fake.faults.outage(30, mode="refuse")
        wait_until_refusing(fake)
        attempt(lambda: wrong_client.get_search("x"))
    guarded.close()
    wrong_client.close()
    # Then no message, traceback or log line holds either key
    assert any(isinstance(exc, CircuitBreakerError) for exc in raised)
    assert any(event.get("event_name") == "circuit_breaker.opened" for event in structlog_events)
    assert "HTTP Request" in caplog.text
    texts = [caplog.text, repr(structlog_events)]
    texts += ["".join(traceback.format_exception(exc)) for exc in raised]
    for text in texts:
        assert KEY not in text
        assert wrong not in text
