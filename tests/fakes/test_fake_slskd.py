"""The fake slskd speaks slskd's REST API: auth, JSON shapes, states over time and controls."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.slskd import (
    CONCURRENT_OPERATION_MESSAGE,
    DUPLICATE_SEARCH,
    PEERS,
    FakeSlskd,
)
from tests.polling import poll

KEY = "test-key"
TRACK = CATALOG[0]
QUERY = f"{TRACK.artist} - {TRACK.title}"
#: A running search's fields; ``endedAt`` joins them once slskd stored the end (nulls are left out).
SEARCH_FIELDS = {
    "id",
    "searchText",
    "state",
    "isComplete",
    "fileCount",
    "lockedFileCount",
    "responseCount",
    "startedAt",
    "token",
    "responses",
}
RESPONSE_FIELDS = {
    "username",
    "fileCount",
    "files",
    "lockedFileCount",
    "lockedFiles",
    "hasFreeUploadSlot",
    "queueLength",
    "uploadSpeed",
    "token",
}
#: Every shared file's fields; audio files add ``length`` and bit rate or depth and sample rate.
FILE_FIELDS = {"filename", "size", "code", "extension", "isVariableBitRate", "isLocked"}
#: A new transfer's fields; the others (``enqueuedAt``, ``startedAt``, ``endedAt``,
#: ``placeInQueue``, ``exception``, ``elapsedTime``, ``remainingTime``) appear once they have a
#: value, since slskd leaves null fields out.
TRANSFER_FIELDS = {
    "id",
    "username",
    "direction",
    "filename",
    "size",
    "state",
    "requestedAt",
    "bytesTransferred",
    "averageSpeed",
    "attempts",
    "removed",
    "bytesRemaining",
    "percentComplete",
}
STATE_ORDER = [
    "Queued, Locally",
    "Requested",
    "Queued, Remotely",
    "Initializing",
    "InProgress",
    "Completed, Succeeded",
]


@pytest.fixture
def fake() -> Iterator[FakeSlskd]:
    with FakeSlskd(api_key=KEY) as server:
        yield server


@pytest.fixture
def http(fake: FakeSlskd) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, headers={"X-API-Key": KEY}, timeout=5) as client:
        yield client


def completed_search(http: httpx.Client, query: str) -> dict[str, Any]:
    search_id = http.post("/api/v0/searches", json={"searchText": query}).json()["id"]
    return poll(lambda: http.get(f"/api/v0/searches/{search_id}").json(), lambda s: s["isComplete"])


def first_file(http: httpx.Client, username: str = "lossless_lover") -> dict[str, Any]:
    search = completed_search(http, QUERY)
    responses = http.get(f"/api/v0/searches/{search['id']}/responses").json()
    response = next(r for r in responses if r["username"] == username)
    return response["files"][0]


def enqueue(http: httpx.Client, username: str, file: dict[str, Any]) -> httpx.Response:
    body = [{"filename": file["filename"], "size": file["size"]}]
    return http.post(f"/api/v0/transfers/downloads/{username}", json=body)


def transfer_of(http: httpx.Client, transfer: dict[str, Any]) -> dict[str, Any]:
    return http.get(f"/api/v0/transfers/downloads/{transfer['username']}/{transfer['id']}").json()


def test_requests_without_the_right_api_key_are_refused_with_401(fake: FakeSlskd) -> None:
    # Given a fake slskd expecting KEY
    # When requests come without a key, or with another one
    missing = httpx.get(f"{fake.url}/api/v0/transfers/downloads")
    wrong = httpx.get(f"{fake.url}/api/v0/transfers/downloads", headers={"X-API-Key": "nope"})
    # Then both are refused, and nothing is echoed back
    assert missing.status_code == wrong.status_code == 401
    assert wrong.content == b""


def test_a_search_for_a_catalog_track_runs_then_completes_with_a_response_per_peer(
    http: httpx.Client,
) -> None:
    # Given a search for a catalog track, with the ID the caller chose
    search_id = str(uuid.uuid4())
    body = {"id": search_id, "searchText": QUERY, "searchTimeout": 15000}
    started = http.post("/api/v0/searches", json=body)
    # Then it starts in progress
    assert started.status_code == 200
    assert set(started.json()) == SEARCH_FIELDS
    assert started.json()["state"] == "InProgress"
    assert started.json()["isComplete"] is False
    # When it has run for search_duration
    search = poll(
        lambda: http.get(f"/api/v0/searches/{search_id}").json(), lambda s: s["isComplete"]
    )
    # Then it completed with one response per peer, and the counts add up
    assert search["id"] == search_id
    assert search["searchText"] == QUERY
    assert search["state"] == "Completed, ResponseLimitReached"
    assert search["responseCount"] == len(PEERS)
    assert search["responses"] == []
    assert set(search) == SEARCH_FIELDS | {"endedAt"}
    assert datetime.fromisoformat(search["endedAt"]) >= datetime.fromisoformat(search["startedAt"])
    responses = http.get(f"/api/v0/searches/{search_id}/responses").json()
    assert search["fileCount"] == sum(len(r["files"]) for r in responses)
    assert search["lockedFileCount"] == sum(len(r["lockedFiles"]) for r in responses) == 1


def test_search_responses_carry_slskd_fields_and_windows_paths(http: httpx.Client) -> None:
    # Given a completed search for a catalog track
    search = completed_search(http, f"{TRACK.artist} {TRACK.title}")
    # When its responses are read
    responses = http.get(f"/api/v0/searches/{search['id']}/responses").json()
    # Then every response and file has slskd's fields, and files sit in Windows-style paths
    assert [r["username"] for r in responses] == [peer.username for peer in PEERS]
    for response in responses:
        assert set(response) == RESPONSE_FIELDS
        for file in response["files"] + response["lockedFiles"]:
            assert set(file) >= FILE_FIELDS
            assert re.match(rf"^@@\w+\\Music\\{TRACK.artist}\\{TRACK.album}\\", file["filename"])
    flac = responses[0]["files"][0]
    assert flac["filename"].endswith(f"01 - {TRACK.title}.flac")
    assert (flac["bitDepth"], flac["sampleRate"], flac["length"]) == (16, 44100, 429)
    assert {r["files"][0].get("bitRate") for r in responses[1:]} == {320, 128}
    assert responses[-1]["hasFreeUploadSlot"] is False
    assert responses[-1]["lockedFiles"][0]["isLocked"] is True


def test_an_unknown_query_completes_timed_out_without_responses(http: httpx.Client) -> None:
    # Given a search nobody shares anything for
    search = completed_search(http, "Nobody - Nothing At All")
    # Then it ends timed out, empty
    assert search["state"] == "Completed, TimedOut"
    assert search["responseCount"] == 0
    assert http.get(f"/api/v0/searches/{search['id']}/responses").json() == []


def test_a_search_start_overlapping_another_answers_429(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    # Given a search start that takes a while
    fake.search_start_delay = 1.0
    first: list[httpx.Response] = []
    starter = threading.Thread(
        target=lambda: first.append(http.post("/api/v0/searches", json={"searchText": QUERY}))
    )
    starter.start()
    poll(lambda: fake.search_starts_in_flight, lambda n: n == 1)
    # When another search starts meanwhile
    second = http.post("/api/v0/searches", json={"searchText": "Teardrop"})
    starter.join()
    # Then it is refused with slskd's message, and the first one went through
    assert second.status_code == 429
    assert second.headers["content-type"] == "application/json"
    assert second.json() == CONCURRENT_OPERATION_MESSAGE
    assert first[0].status_code == 200


def test_busy_searches_over_http_makes_the_next_starts_answer_429(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    # Given two busy search starts ordered over HTTP
    assert http.post("/_faults/busy_searches", json={"count": 2}).status_code == 204
    # When three searches start
    statuses = [
        http.post("/api/v0/searches", json={"searchText": QUERY}).status_code for _ in range(3)
    ]
    # Then the first two were refused
    assert statuses == [429, 429, 200]


def test_a_duplicate_search_id_answers_500_with_the_databases_message(http: httpx.Client) -> None:
    """``SearchService.StartAsync`` inserts the search first; the insert of a taken id throws,
    and ``SearchesController.Post`` answers any other exception 500 with its message."""
    body = {"id": str(uuid.uuid4()), "searchText": QUERY}
    assert http.post("/api/v0/searches", json=body).status_code == 200
    again = http.post("/api/v0/searches", json=body)
    assert (again.status_code, again.json()) == (500, DUPLICATE_SEARCH)


def test_unknown_searches_and_transfers_answer_404(http: httpx.Client) -> None:
    missing = str(uuid.uuid4())
    assert http.get(f"/api/v0/searches/{missing}").status_code == 404
    assert http.get(f"/api/v0/searches/{missing}/responses").status_code == 404
    assert http.get(f"/api/v0/transfers/downloads/someone/{missing}").status_code == 404


def test_a_download_goes_from_queued_locally_through_in_progress_to_succeeded(
    http: httpx.Client,
) -> None:
    # Given a file a peer shares, enqueued
    file = first_file(http)
    answer = enqueue(http, "lossless_lover", file)
    assert answer.status_code == 201
    assert answer.json()["failed"] == []
    (transfer,) = answer.json()["enqueued"]
    assert set(transfer) == TRANSFER_FIELDS
    assert transfer["state"] == "Queued, Locally"
    # When it is read until it ends
    seen = [transfer]
    while not seen[-1]["state"].startswith("Completed"):
        time.sleep(0.02)
        seen.append(transfer_of(http, transfer))
    # Then it went through slskd's states in order, its bytes only growing, to success
    states = [item["state"] for item in seen]
    assert sorted(set(states), key=STATE_ORDER.index) == list(dict.fromkeys(states))
    assert states[-1] == "Completed, Succeeded"
    transferred = [item["bytesTransferred"] for item in seen]
    assert transferred == sorted(transferred)
    assert (seen[-1]["bytesTransferred"], seen[-1]["percentComplete"]) == (file["size"], 100.0)
    assert "exception" not in seen[-1]
    assert all(value is not None for item in seen for value in item.values())


def test_fail_downloads_over_http_fails_the_next_transfer_with_its_exception(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    # Given one failing download ordered over HTTP
    options = {"count": 1, "state": "Completed, Rejected", "exception": "Transfer failed: banned"}
    assert http.post("/_faults/fail_downloads", json=options).status_code == 204
    file = first_file(http)
    # When two downloads run to their end
    ended = []
    for _ in range(2):
        (transfer,) = enqueue(http, "lossless_lover", file).json()["enqueued"]
        ended.append(poll(lambda t=transfer: transfer_of(http, t), lambda t: "endedAt" in t))
    # Then the first failed with the given state and reason, the second succeeded
    assert (ended[0]["state"], ended[0]["exception"]) == (
        "Completed, Rejected",
        "Transfer failed: banned",
    )
    assert ended[0]["bytesTransferred"] < file["size"]
    assert ended[1]["state"] == "Completed, Succeeded"


def test_fail_downloads_from_a_peer_fails_only_that_peers_transfers(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    # Given a peer whose transfers fail
    fake.fail_downloads_from("old_rips")
    search = completed_search(http, QUERY)
    responses = {
        r["username"]: r["files"][0]
        for r in http.get(f"/api/v0/searches/{search['id']}/responses").json()
    }
    # When a file is downloaded from it and from another peer
    ended = {}
    for username in ("old_rips", "slow_peer"):
        (transfer,) = enqueue(http, username, responses[username]).json()["enqueued"]
        ended[username] = poll(lambda t=transfer: transfer_of(http, t), lambda t: "endedAt" in t)
    # Then only that peer's transfer failed
    assert ended["old_rips"]["state"] == "Completed, Errored"
    assert ended["old_rips"]["exception"].startswith("Transfer failed:")
    assert ended["slow_peer"]["state"] == "Completed, Succeeded"


def test_a_file_the_peer_does_not_share_is_enqueued_then_rejected_by_the_peer(
    http: httpx.Client,
) -> None:
    # Given a file the peer does not share
    # When it is enqueued
    answer = enqueue(http, "lossless_lover", {"filename": "@@flac\\nothing.flac", "size": 1})
    # Then slskd enqueued it (it asks the peer only afterwards), and the peer rejected it
    assert answer.status_code == 201
    (transfer,) = answer.json()["enqueued"]
    assert answer.json()["failed"] == []
    ended = poll(lambda: transfer_of(http, transfer), lambda t: "endedAt" in t)
    assert (ended["state"], ended["exception"]) == (
        "Completed, Rejected",
        "Transfer rejected: File not shared.",
    )
    assert ended["bytesTransferred"] == 0


def test_a_cancelled_download_stays_listed_as_cancelled(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    # Given a download that takes long
    fake.transfer_duration = 60.0
    file = first_file(http)
    (transfer,) = enqueue(http, "lossless_lover", file).json()["enqueued"]
    # When it is cancelled without removing it
    path = f"/api/v0/transfers/downloads/lossless_lover/{transfer['id']}"
    assert http.delete(path, params={"remove": "false"}).status_code == 204
    # Then it is still there, cancelled
    assert http.get(path).json()["state"] == "Completed, Cancelled"


def test_the_downloads_list_groups_transfers_by_user_then_directory(http: httpx.Client) -> None:
    # Given a download from a user whose name holds a space (URL-quoted in the path)
    search = completed_search(http, QUERY)
    responses = http.get(f"/api/v0/searches/{search['id']}/responses").json()
    file = next(r for r in responses if r["username"] == "mp3 archive")["files"][0]
    (transfer,) = enqueue(http, "mp3%20archive", file).json()["enqueued"]
    # When the downloads are listed
    listing = http.get("/api/v0/transfers/downloads").json()
    # Then the transfer sits under its user and its directory
    assert [group["username"] for group in listing] == ["mp3 archive"]
    (directory,) = listing[0]["directories"]
    assert directory["directory"] == file["filename"].rsplit("\\", 1)[0]
    assert [item["id"] for item in directory["files"]] == [transfer["id"]]


def test_a_third_concurrent_enqueue_answers_429(fake: FakeSlskd, http: httpx.Client) -> None:
    # Given two slow enqueue requests in flight
    fake.enqueue_delay = 1.0
    file = first_file(http)
    answers: list[httpx.Response] = []
    workers = [
        threading.Thread(target=lambda: answers.append(enqueue(http, "lossless_lover", file)))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    poll(lambda: fake.enqueues_in_flight, lambda n: n == 2)
    # When a third one comes
    third = enqueue(http, "lossless_lover", file)
    for worker in workers:
        worker.join()
    # Then it is refused while the two others went through
    assert third.status_code == 429
    assert [answer.status_code for answer in answers] == [201, 201]


def test_busy_enqueues_makes_the_next_enqueue_answer_429(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    fake.busy_enqueues(1)
    file = first_file(http)
    assert enqueue(http, "lossless_lover", file).status_code == 429
    assert enqueue(http, "lossless_lover", file).status_code == 201


def test_the_legacy_mode_answers_an_enqueue_with_an_empty_201(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    fake.legacy_enqueue = True
    file = first_file(http)
    answer = enqueue(http, "lossless_lover", file)
    assert (answer.status_code, answer.content) == (201, b"")
    assert http.get("/api/v0/transfers/downloads/lossless_lover").json()["directories"]


def test_durations_are_settable_over_http(fake: FakeSlskd, http: httpx.Client) -> None:
    assert http.post("/_faults/search_duration", json={"seconds": 7}).status_code == 204
    assert http.post("/_faults/transfer_duration", json={"seconds": 9}).status_code == 204
    assert (fake.search_duration, fake.transfer_duration) == (7.0, 9.0)


def test_clear_over_http_resets_slskd_controls_and_base_faults(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    # Given slskd controls and a base fault set
    fake.busy_searches(5)
    fake.faults.fail(5, 500)
    # When clear is posted
    assert http.post("/_faults/clear", json={}).status_code == 204
    # Then searches start again
    assert http.post("/api/v0/searches", json={"searchText": QUERY}).status_code == 200


def test_bad_control_options_answer_400_and_unknown_ones_404(http: httpx.Client) -> None:
    assert http.post("/_faults/busy_searches", json={}).status_code == 400
    bad_state = {"count": 1, "state": "Completed, Succeeded"}
    assert http.post("/_faults/fail_downloads", json=bad_state).status_code == 400
    assert http.post("/_faults/nonsense", json={}).status_code == 404
    assert (
        http.post("/_faults/peers_offline", json={"usernames": ["a"], "reason": "x"}).status_code
        == 400
    )
    assert http.post("/_faults/version", json={"version": "9.9"}).status_code == 400


def test_peers_per_track_limits_who_answers_a_search() -> None:
    with FakeSlskd(api_key=KEY, peers_per_track=1, search_duration=0) as fake:
        http = httpx.Client(base_url=fake.url, headers={"X-API-Key": KEY}, timeout=5)
        search = completed_search(http, QUERY)
        http.close()
    assert search["responseCount"] == 1


# -- what real slskd does that the happy path hides ----------------------------------------------


def test_responses_are_stored_only_when_the_search_ends(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    # Given a search that runs for a while
    fake.search_duration = 1.0
    search_id = http.post("/api/v0/searches", json={"searchText": QUERY}).json()["id"]
    # When it has counted some responses but not ended
    running = poll(
        lambda: http.get(f"/api/v0/searches/{search_id}").json(), lambda s: s["responseCount"]
    )
    responses_meanwhile = http.get(f"/api/v0/searches/{search_id}/responses").json()
    # Then none are readable yet and it has no end
    assert running["state"] == "InProgress" and running["responseCount"] > 0
    assert "endedAt" not in running
    assert responses_meanwhile == []
    # And once it ended, all of them are
    done = completed_search_by_id(http, search_id)
    assert "endedAt" in done
    assert len(http.get(f"/api/v0/searches/{search_id}/responses").json()) == len(PEERS)


def completed_search_by_id(http: httpx.Client, search_id: str) -> dict[str, Any]:
    return poll(lambda: http.get(f"/api/v0/searches/{search_id}").json(), lambda s: "endedAt" in s)


def test_early_complete_over_http_shows_completed_before_the_responses_are_stored(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    # Given searches that read Completed 1 s before slskd stores their responses
    assert http.post("/_faults/early_complete", json={"seconds": 1.0}).status_code == 204
    search_id = http.post("/api/v0/searches", json={"searchText": QUERY}).json()["id"]
    # When the search reads complete
    early = poll(
        lambda: http.get(f"/api/v0/searches/{search_id}").json(), lambda s: s["isComplete"]
    )
    early_responses = http.get(f"/api/v0/searches/{search_id}/responses").json()
    # Then it has counted its responses, but has no end and no stored responses yet
    assert early["state"] == "Completed, ResponseLimitReached"
    assert early["responseCount"] == len(PEERS)
    assert "endedAt" not in early and early_responses == []
    # And once slskd recorded the end, the responses are there
    completed_search_by_id(http, search_id)
    assert len(http.get(f"/api/v0/searches/{search_id}/responses").json()) == len(PEERS)
    assert fake.finalize_delay == 1.0


def test_the_searches_are_listed_without_their_responses(http: httpx.Client) -> None:
    # Given two ended searches, when they are listed, then both are there, responses left out
    first = completed_search(http, QUERY)
    second = completed_search(http, "Nobody - Nothing At All")
    listing = http.get("/api/v0/searches").json()
    assert [(s["id"], s["responses"]) for s in listing] == [(first["id"], []), (second["id"], [])]


def test_the_downloads_list_answers_with_a_trailing_slash_too(http: httpx.Client) -> None:
    # Given a download, when the list is read as slskd-api reads it, then the download is there
    file = first_file(http)
    (transfer,) = enqueue(http, "lossless_lover", file).json()["enqueued"]
    listing = http.get("/api/v0/transfers/downloads/", params={"includeRemoved": "false"})
    assert listing.status_code == 200
    assert listing.json()[0]["directories"][0]["files"][0]["id"] == transfer["id"]


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("offline", "User lossless_lover appears to be offline"),
        ("unreachable", "Failed to connect to user lossless_lover: Failed to establish a direct"),
        ("timeout", "The wait timed out after 5000 milliseconds"),
    ],
)
def test_peers_offline_over_http_answers_their_enqueues_500_with_slskds_message(
    http: httpx.Client, reason: str, message: str
) -> None:
    # Given the FLAC peer gone, ordered over HTTP
    file = first_file(http)
    options = {"usernames": ["lossless_lover"], "reason": reason}
    assert http.post("/_faults/peers_offline", json=options).status_code == 204
    # When a file is enqueued from it, and from another peer
    refused = enqueue(http, "lossless_lover", file)
    other = enqueue(http, "old_rips", {"filename": "x", "size": 1})
    # Then slskd answered 500 with the library's message as a JSON string; the other went on
    assert refused.status_code == 500
    assert refused.headers["content-type"] == "application/json"
    assert refused.json().startswith(message)
    assert other.status_code == 201
    # And no transfer was created for the offline peer
    assert http.get("/api/v0/transfers/downloads/lossless_lover").status_code == 404


def test_an_enqueue_from_a_user_nobody_knows_answers_500_offline(http: httpx.Client) -> None:
    # The Soulseek server gives no address for an unknown user: slskd calls it offline
    answer = enqueue(http, "ghost", {"filename": "@@x\\y.flac", "size": 1})
    assert (answer.status_code, answer.json()) == (500, "User ghost appears to be offline")


@pytest.mark.parametrize(
    ("version", "failed"),
    [("0.26", [{}]), ("0.25", "filename"), ("0.24", "filename"), ("0.23", None)],
)
def test_a_duplicate_enqueue_is_skipped_and_listed_failed_in_the_versions_shape(
    fake: FakeSlskd, http: httpx.Client, version: str, failed: Any
) -> None:
    # Given a download in progress, on an slskd of that version (set over HTTP)
    fake.transfer_duration = 60.0
    assert http.post("/_faults/version", json={"version": version}).status_code == 204
    file = first_file(http)
    first = enqueue(http, "lossless_lover", file)
    # When the same file is enqueued again from the same peer
    second = enqueue(http, "lossless_lover", file)
    # Then it was not enqueued twice, and the answer says so in that version's shape
    assert first.status_code == second.status_code == 201
    if failed is None:
        assert second.content == b""
    else:
        expected = [file["filename"]] if failed == "filename" else failed
        assert second.json() == {"enqueued": [], "failed": expected}
    listing = http.get("/api/v0/transfers/downloads/lossless_lover").json()
    assert sum(len(d["files"]) for d in listing["directories"]) == 1


def test_a_finished_download_can_be_enqueued_again(fake: FakeSlskd, http: httpx.Client) -> None:
    # Given a download that ended, when the file is enqueued again, then a new transfer starts
    file = first_file(http)
    (first,) = enqueue(http, "lossless_lover", file).json()["enqueued"]
    poll(lambda: transfer_of(http, first), lambda t: "endedAt" in t)
    (second,) = enqueue(http, "lossless_lover", file).json()["enqueued"]
    assert second["id"] != first["id"]


def test_fail_enqueues_over_http_lists_the_next_file_failed_without_a_transfer(
    http: httpx.Client,
) -> None:
    # Given slskd failing to add the next file, ordered over HTTP
    file = first_file(http)
    assert http.post("/_faults/fail_enqueues", json={"count": 1}).status_code == 204
    # Then it is listed failed with no transfer, and the one after is enqueued
    assert enqueue(http, "lossless_lover", file).json() == {"enqueued": [], "failed": [{}]}
    assert http.get("/api/v0/transfers/downloads/lossless_lover").status_code == 404
    assert len(enqueue(http, "lossless_lover", file).json()["enqueued"]) == 1


def test_the_queue_position_of_a_remotely_queued_download_is_the_peers_queue_plus_one(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    # Given a download from the busy peer (37 uploads queued), long enough to watch it queue
    fake.transfer_duration = 4.0
    search = completed_search(http, QUERY)
    responses = http.get(f"/api/v0/searches/{search['id']}/responses").json()
    file = next(r for r in responses if r["username"] == "slow_peer")["files"][0]
    (transfer,) = enqueue(http, "slow_peer", file).json()["enqueued"]
    path = f"/api/v0/transfers/downloads/slow_peer/{transfer['id']}/position"
    # When it is queued at the peer
    queued = poll(lambda: transfer_of(http, transfer), lambda t: t["state"] == "Queued, Remotely")
    # Then its place is 38, in the answer and in the transfer
    assert queued["placeInQueue"] == 38
    assert http.get(path).json() == 38
    # And an unknown download is 404, a finished one 500 "not active"
    assert (
        http.get(f"/api/v0/transfers/downloads/slow_peer/{uuid.uuid4()}/position").status_code
        == 404
    )
    fake.transfer_duration = 0.0
    (done,) = enqueue(http, "old_rips", {"filename": "x", "size": 1}).json()["enqueued"]
    answer = http.get(f"/api/v0/transfers/downloads/old_rips/{done['id']}/position")
    assert answer.status_code == 500 and answer.json().endswith("is not active")
