"""The fake slskd's transfers as slskd 0.26.0 keeps them: error bodies, ids, soft deletes,
batches and the count of completed downloads. Each test names the slskd source it follows."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime

import httpx
import pytest

from soulspot_jobs.fakes.slskd import (
    ALREADY_IN_PROGRESS,
    BATCH,
    CONCURRENT_OPERATION_MESSAGE,
    ENQUEUE_ERROR,
    PER_USER,
    EnqueueRequest,
    FakeSlskd,
)
from tests.fakes.slskd_support import (
    BATCHES,
    DOWNLOADS,
    KEY,
    QUERY,
    ended,
    enqueue,
    enqueue_batch,
    files_of,
    listed_ids,
    transfer_by_id,
)
from tests.polling import poll

JSON = "application/json"


# -- error bodies ---------------------------------------------------------------------------------


def test_error_answers_with_a_message_carry_it_as_a_json_string(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """``SearchesController.cs`` and ``TransfersController.cs`` answer with an ObjectResult of
    a string (``BadRequest("...")``, ``StatusCode(429, "...")``), which ASP.NET writes as JSON."""
    # Given requests slskd refuses with a message: a blank search, an empty enqueue, and a
    # search start and an enqueue while slskd is busy
    blank = http.post("/api/v0/searches", json={"searchText": "  "})
    empty = http.post(f"{DOWNLOADS}/lossless_lover", json=[])
    fake.busy_searches(1)
    fake.busy_enqueues(1)
    busy_search = http.post("/api/v0/searches", json={"searchText": QUERY})
    busy_enqueue = http.post(
        BATCHES, json={"username": "x", "files": [{"filename": "a", "size": 1}]}
    )
    # Then each message is a JSON string
    answers = [blank, empty, busy_search, busy_enqueue]
    assert [a.status_code for a in answers] == [400, 400, 429, 429]
    assert all(a.headers["content-type"] == JSON for a in answers)
    assert blank.json().startswith("The field SearchText can not be null")
    assert empty.json() == "At least one file is required"
    assert busy_search.json() == busy_enqueue.json() == CONCURRENT_OPERATION_MESSAGE


def test_a_bare_not_found_or_bad_request_has_an_empty_body(http: httpx.Client) -> None:
    """``Program.cs`` sets ``SuppressMapClientErrors`` (no ProblemDetails), and
    ``TransfersController.cs``'s bare ``NotFound()`` and ``BadRequest()`` carry no body."""
    missing = http.get(f"{DOWNLOADS}/someone/{uuid.uuid4()}")
    not_a_guid = http.get(f"{DOWNLOADS}/someone/not-a-guid")
    assert (missing.status_code, missing.content) == (404, b"")
    assert (not_a_guid.status_code, not_a_guid.content) == (400, b"")


def test_a_body_that_does_not_bind_answers_400_with_the_model_binding_message(
    http: httpx.Client,
) -> None:
    """``TransfersController.EnqueueAsync`` answers ``BadRequest(ModelState
    .GetReadableString())`` (``CommonExtensions.cs``) when the body does not bind."""
    answer = http.post(f"{DOWNLOADS}/lossless_lover", json={"filename": "x", "size": 1})
    assert answer.status_code == 400
    assert answer.json().startswith(
        "The JSON value could not be converted to System.Collections.Generic.IEnumerable`1"
        "[slskd.Transfers.API.QueueDownloadRequest]. Path: $"
    )
    no_body = http.post(f"{DOWNLOADS}/lossless_lover", content=b"", headers={"Content-Type": JSON})
    assert (no_body.status_code, no_body.json()) == (400, "A non-empty request body is required.")


# -- transfer ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("DELETE", ""), ("GET", "/position")])
def test_a_transfer_id_that_is_not_a_guid_answers_400(
    http: httpx.Client, method: str, suffix: str
) -> None:
    """``TransfersController.cs``: ``if (!Guid.TryParse(id, out var guid)) return BadRequest();``
    in ``GetDownload``, ``CancelDownloadAsync`` and ``GetPlaceInQueueAsync``."""
    answer = http.request(method, f"{DOWNLOADS}/lossless_lover/12345{suffix}")
    assert (answer.status_code, answer.content) == (400, b"")


def test_a_transfer_is_found_by_its_id_whatever_user_the_path_names(http: httpx.Client) -> None:
    """``TransfersController.GetDownload``: ``Transfers.Downloads.Find(t => t.Id == guid)``,
    the user name in the route is not read (nor in ``GetPlaceInQueueAsync``)."""
    # Given a download from lossless_lover
    (transfer,) = enqueue(http, "lossless_lover", files_of(http)[0]).json()["enqueued"]
    # When it is read under another user's name, in any GUID writing slskd reads
    other = http.get(f"{DOWNLOADS}/somebody_else/{transfer['id']}")
    upper = http.get(f"{DOWNLOADS}/x/{{{transfer['id'].upper()}}}")
    position = http.get(f"{DOWNLOADS}/somebody_else/{transfer['id']}/position")
    # Then it is the same transfer
    assert other.status_code == upper.status_code == 200
    assert other.json()["username"] == upper.json()["username"] == "lossless_lover"
    assert position.status_code in (200, 500)  # 500 once no longer active


# -- soft deletes ---------------------------------------------------------------------------------


def test_removing_an_ended_download_hides_it_from_the_lists_but_not_from_get_by_id(
    http: httpx.Client,
) -> None:
    """``TransfersController.CancelDownloadAsync`` calls ``Downloads.Remove(guid)``, a soft
    delete (``DownloadService.Remove``); ``List`` leaves removed ones out unless
    ``includeRemoved`` (``GetDownloadsAsync``), ``Find`` does not."""
    # Given a download that ended
    (transfer,) = enqueue(http, "lossless_lover", files_of(http)[0]).json()["enqueued"]
    assert ended(http, transfer)["removed"] is False
    # When it is removed
    path = f"{DOWNLOADS}/lossless_lover/{transfer['id']}"
    assert http.delete(path, params={"remove": "true"}).status_code == 204
    # Then it still answers by id, removed
    got = http.get(path)
    assert (got.status_code, got.json()["removed"]) == (200, True)
    assert got.json()["state"] == "Completed, Succeeded"
    # And the lists leave it out, unless asked to include it
    assert listed_ids(http.get(DOWNLOADS).json()) == []
    everything = http.get(DOWNLOADS, params={"includeRemoved": "true"}).json()
    assert listed_ids(everything) == [transfer["id"]]
    # And the user's own list (which takes no includeRemoved) has nothing left
    user = http.get(f"{DOWNLOADS}/lossless_lover", params={"includeRemoved": "true"})
    assert user.status_code == 404


def test_removing_a_running_download_only_cancels_it_a_second_delete_removes_it(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """``CancelDownloadAsync`` calls ``TryCancel`` then ``Remove``; ``DownloadService.Remove``
    touches completed records only, and the cancellation completes the transfer after it."""
    # Given a long download
    fake.transfer_duration = 60.0
    (transfer,) = enqueue(http, "lossless_lover", files_of(http)[0]).json()["enqueued"]
    path = f"{DOWNLOADS}/lossless_lover/{transfer['id']}"
    # When it is deleted with remove=true
    assert http.delete(path, params={"remove": "true"}).status_code == 204
    # Then it is cancelled, still listed
    first = http.get(path).json()
    assert (first["state"], first["removed"]) == ("Completed, Cancelled", False)
    assert listed_ids(http.get(DOWNLOADS).json()) == [transfer["id"]]
    # And a second delete removes it
    assert http.delete(path, params={"remove": "true"}).status_code == 204
    assert http.get(path).json()["removed"] is True


def test_deleting_an_unknown_transfer_answers_204(http: httpx.Client) -> None:
    """``DownloadService.TryCancel`` and ``Remove`` return false for an unknown id and throw
    nothing, so ``CancelDownloadAsync`` answers ``NoContent()``."""
    answer = http.delete(f"{DOWNLOADS}/someone/{uuid.uuid4()}", params={"remove": "true"})
    assert answer.status_code == 204


def test_enqueuing_a_file_again_supersedes_its_older_records(http: httpx.Client) -> None:
    """``DownloadService.EnqueueAsync`` marks the existing records of the file that are not
    removed ``Removed = true`` when it adds the new one."""
    # Given a download that ended
    file = files_of(http)[0]
    (first,) = enqueue(http, "lossless_lover", file).json()["enqueued"]
    ended(http, first)
    # When the same file is enqueued again from the same peer
    (second,) = enqueue(http, "lossless_lover", file).json()["enqueued"]
    # Then the older record is removed, the lists show the new one only
    assert transfer_by_id(http, first["id"])["removed"] is True
    assert second["removed"] is False
    assert listed_ids(http.get(f"{DOWNLOADS}/lossless_lover").json()) == [second["id"]]
    everything = http.get(DOWNLOADS, params={"includeRemoved": "true"}).json()
    assert sorted(listed_ids(everything)) == sorted([first["id"], second["id"]])


def test_clearing_completed_downloads_removes_the_ended_ones(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """``TransfersController.ClearCompletedDownloads``: ``Remove(t => !t.Removed &&
    Completed)``."""
    # Given an ended download and a running one
    done, running = files_of(http, count=2)
    (first,) = enqueue(http, "lossless_lover", done).json()["enqueued"]
    ended(http, first)
    fake.transfer_duration = 60.0
    (second,) = enqueue(http, "lossless_lover", running).json()["enqueued"]
    # When the completed ones are cleared, then only the ended one is removed
    assert http.delete(f"{DOWNLOADS}/all/completed").status_code == 204
    assert listed_ids(http.get(DOWNLOADS).json()) == [second["id"]]


def test_with_hard_delete_a_removed_transfer_is_gone(http: httpx.Client) -> None:
    """Older servers and other setups deleted the record: the fake's ``hard_delete``, set over
    HTTP here (``DownloadService.Remove`` is a soft delete in slskd 0.26)."""
    assert http.post("/_faults/hard_delete", json={"value": True}).status_code == 204
    (transfer,) = enqueue(http, "lossless_lover", files_of(http)[0]).json()["enqueued"]
    ended(http, transfer)
    path = f"{DOWNLOADS}/lossless_lover/{transfer['id']}"
    assert http.delete(path, params={"remove": "true"}).status_code == 204
    assert http.get(path).status_code == 404
    assert http.delete(path, params={"remove": "true"}).status_code == 404


def test_hard_delete_is_a_constructor_flag_too() -> None:
    with FakeSlskd(api_key=KEY, hard_delete=True) as fake:
        assert fake.hard_delete is True
        assert FakeSlskd(api_key=KEY).hard_delete is False


# -- the transfer's fields ------------------------------------------------------------------------


def test_a_rejected_transfers_end_is_frozen_and_a_succeeded_one_has_no_time_left(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """``Transfer.cs``: ``EndedAt`` is set once, ``StartedAt`` only when data moved,
    ``RemainingTime`` is null only while ``AverageSpeed`` is 0, ``Attempts`` starts at 0."""
    # Given a file the peer does not share and one it does
    fake.transfer_duration = 1.0
    (rejected,) = enqueue(
        http, "lossless_lover", {"filename": "@@flac\\no.flac", "size": 1}
    ).json()["enqueued"]
    (shared,) = enqueue(http, "lossless_lover", files_of(http)[0]).json()["enqueued"]
    assert rejected["attempts"] == 0
    # When both ended
    first = ended(http, rejected)
    done = ended(http, shared)
    later = transfer_by_id(http, rejected["id"])
    # Then the rejected one kept its end, never started, and the succeeded one has 0 left
    assert later["endedAt"] == first["endedAt"]
    assert "startedAt" not in later and "remainingTime" not in later
    assert done["remainingTime"] == "00:00:00.0000000"
    assert done["attempts"] == 1


# -- batches ------------------------------------------------------------------------------------


def test_a_batch_enqueues_its_files_and_answers_201_with_the_batch(http: httpx.Client) -> None:
    """``TransfersController.EnqueueBatchAsync`` answers 201 with an
    ``EnqueueDownloadBatchResponse`` (``EnqueueDownloadBatchResponse.cs``, ``Batch.cs``)."""
    # Given two files and a batch id and search id chosen by the caller
    files = files_of(http, count=2)
    batch_id, search_id = uuid.uuid4(), uuid.uuid4()
    options = {"destination": "Daft Punk", "externalId": "x"}
    # When they are enqueued in a batch (the ids in capitals: slskd reads any GUID writing)
    answer = enqueue_batch(
        http,
        "lossless_lover",
        *files,
        id=str(batch_id).upper(),
        searchId=str(search_id),
        options=options,
    )
    # Then the batch holds their transfers, each naming the batch
    assert answer.status_code == 201
    body = answer.json()
    assert body["failures"] == []
    batch = body["batch"]
    assert set(batch) == {
        "searchId",
        "id",
        "username",
        "direction",
        "createdAt",
        "transfers",
        "options",
    }
    assert (batch["id"], batch["searchId"]) == (str(batch_id), str(search_id))
    assert (batch["username"], batch["direction"]) == ("lossless_lover", "Download")
    assert batch["options"] == {"destination": "Daft Punk"}  # slskd keeps the destination only
    datetime.fromisoformat(batch["createdAt"])
    transfers = batch["transfers"]
    assert [t["filename"] for t in transfers] == [file["filename"] for file in files]
    assert {(t["batchId"], t["state"]) for t in transfers} == {(str(batch_id), "Queued, Locally")}
    # And it can be read back, its transfers as they are now
    done = [ended(http, transfer) for transfer in transfers]
    assert http.get(f"{BATCHES}/{batch_id}").json()["transfers"] == done


def test_a_batch_with_some_files_in_progress_answers_207_and_with_all_200(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """``EnqueueBatchAsync``: 207 when some files failed, 200 when all did; the failures carry
    ``DownloadService.EnqueueAsync``'s messages."""
    # Given a file already downloading
    fake.transfer_duration = 60.0
    busy, free = files_of(http, count=2)
    assert enqueue_batch(http, "lossless_lover", busy).status_code == 201
    # When it is enqueued again with another, then alone
    some = enqueue_batch(http, "lossless_lover", busy, free)
    fake.fail_enqueues(1)
    none = enqueue_batch(http, "lossless_lover", {"filename": "@@flac\\z.flac", "size": 2})
    # Then the answers tell which failed, and why
    assert some.status_code == 207
    assert some.json()["failures"] == [
        {"filename": busy["filename"], "message": ALREADY_IN_PROGRESS}
    ]
    assert [t["filename"] for t in some.json()["batch"]["transfers"]] == [free["filename"]]
    assert none.status_code == 200
    assert none.json()["failures"] == [{"filename": "@@flac\\z.flac", "message": ENQUEUE_ERROR}]
    assert none.json()["batch"]["transfers"] == []


@pytest.mark.parametrize(
    ("reason", "status", "message"),
    [
        ("offline", 404, "User lossless_lover appears to be offline"),
        ("timeout", 500, "The wait timed out after 5000 milliseconds"),
        ("unreachable", 500, "Failed to connect to user lossless_lover"),
    ],
)
def test_a_batch_from_a_peer_that_cannot_be_reached_answers_with_the_librarys_message(
    fake: FakeSlskd, http: httpx.Client, reason: str, status: int, message: str
) -> None:
    """``EnqueueBatchAsync`` catches ``UserOfflineException`` as 404; any other exception
    (a timeout, a failed connection) is 500 with its message."""
    file = files_of(http)[0]
    fake.peers_offline("lossless_lover", reason=reason)
    answer = enqueue_batch(http, "lossless_lover", file)
    assert answer.status_code == status
    assert answer.headers["content-type"] == JSON
    assert answer.json().startswith(message)
    assert http.get(f"{DOWNLOADS}/lossless_lover").status_code == 404


def test_a_batch_id_already_used_answers_409_even_when_its_peer_was_unreachable(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """``EnqueueBatchAsync`` creates the batch (``Batches.CreateAsync``, which throws
    ``DuplicateException`` for a taken id: 409) before ``EnqueueAsync`` connects to the peer."""
    file = files_of(http)[0]
    batch_id = str(uuid.uuid4())
    fake.peers_offline("lossless_lover", reason="unreachable")
    assert enqueue_batch(http, "lossless_lover", file, id=batch_id).status_code == 500
    fake.clear()
    again = enqueue_batch(http, "lossless_lover", file, id=batch_id)
    assert (again.status_code, again.json()) == (409, f"A batch with ID {batch_id} already exists")
    assert http.get(f"{BATCHES}/{batch_id}").json()["transfers"] == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"id": "batch-1"}, "The Id field must be a valid GUID/UUID"),
        ({"searchId": "nope"}, "The SearchId field must be a valid GUID/UUID"),
        ({"username": None}, "The Username field is required."),
        (
            {"files": []},
            "The field Files must be a string or array type with a minimum length of '1'.",
        ),
        ({"files": None}, "The Files field is required."),
        ({"files": [{"filename": "a"}]}, "The Size field is required."),
        (
            {"files": [{"filename": "a", "size": 1}, {"filename": "a", "size": 2}]},
            "Two or more files in the request are repeated",
        ),
    ],
)
def test_a_batch_slskd_cannot_take_answers_400_with_its_reason(
    http: httpx.Client, fields: dict, message: str
) -> None:
    """``EnqueueDownloadBatchRequest.cs``'s validation attributes (``[Guid]``, ``[Required]``,
    ``[MinLength(1)]``) answer before ``EnqueueBatchAsync``'s own checks (repeated files)."""
    body = {"username": "lossless_lover", "files": [{"filename": "a", "size": 1}], **fields}
    answer = http.post(BATCHES, json=body)
    assert (answer.status_code, answer.json()) == (400, message)


def test_a_list_posted_to_batches_does_not_bind(http: httpx.Client) -> None:
    """``EnqueueBatchAsync`` takes an ``EnqueueDownloadBatchRequest`` object."""
    answer = http.post(BATCHES, json=[{"filename": "a", "size": 1}])
    assert answer.status_code == 400
    assert "slskd.Transfers.API.EnqueueDownloadBatchRequest" in answer.json()


def test_reading_a_batch_answers_400_for_no_guid_and_404_for_none(http: httpx.Client) -> None:
    """``TransfersController.Get`` (``downloads/batches/{id}``)."""
    bad = http.get(f"{BATCHES}/batch-1")
    assert (bad.status_code, bad.json()) == (
        400,
        "The specified id batch-1 is not a valid GUID/UUID",
    )
    assert http.get(f"{BATCHES}/{uuid.uuid4()}").status_code == 404


def test_the_batches_endpoint_shares_the_limit_of_two_enqueues_at_once(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """``TransfersController``'s one ``DownloadRequestLimiter`` (2) guards both endpoints."""
    # Given two slow per-user enqueues in flight
    fake.enqueue_delay = 1.0
    file = files_of(http)[0]
    answers: list[httpx.Response] = []
    workers = [
        threading.Thread(target=lambda: answers.append(enqueue(http, "old_rips", file)))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    poll(lambda: fake.enqueues_in_flight, lambda n: n == 2)
    # When a batch comes meanwhile, then it is refused
    refused = enqueue_batch(http, "lossless_lover", file)
    for worker in workers:
        worker.join()
    assert (refused.status_code, refused.json()) == (429, CONCURRENT_OPERATION_MESSAGE)


@pytest.mark.parametrize("version", ["0.25", "0.24"])
def test_before_026_a_batch_is_taken_for_an_enqueue_from_a_user_named_batches(
    fake: FakeSlskd, http: httpx.Client, version: str
) -> None:
    """slskd 0.24-0.25's ``TransfersController`` has no ``downloads/batches`` route:
    ``POST downloads/{username}`` takes it, and its object body does not bind to the list
    ``EnqueueAsync`` expects."""
    fake.version = version
    answer = enqueue_batch(http, "lossless_lover", files_of(http)[0])
    assert answer.status_code == 400
    assert answer.json().startswith("The JSON value could not be converted to")
    assert fake.enqueue_requests[-1][:3] == ("batches", (), PER_USER)
    assert http.get(f"{BATCHES}/{uuid.uuid4()}").status_code == 404


def test_the_legacy_enqueue_answer_comes_without_the_batches_endpoint(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """slskd before 0.24 answered enqueues with an empty 201, and had no batches."""
    fake.legacy_enqueue = True
    assert enqueue_batch(http, "lossless_lover", files_of(http)[0]).status_code == 400


def test_every_enqueue_call_is_recorded_with_its_endpoint_and_status(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    # Given one call to each endpoint and a refused one
    file = files_of(http)[0]
    enqueue(http, "lossless_lover", file)
    fake.busy_enqueues(1)
    enqueue_batch(http, "old_rips", file)
    # Then each is recorded, in order
    name = file["filename"]
    assert fake.enqueue_requests == [
        EnqueueRequest("lossless_lover", (name,), PER_USER, 201),
        EnqueueRequest("old_rips", (name,), BATCH, 429),
    ]


# -- counting downloads ---------------------------------------------------------------------------


def test_completed_downloads_lists_every_success_removed_ones_too(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """What reads ``Completed, Succeeded`` was downloaded (``DownloadService.DownloadAsync``
    moves the file on success), whatever became of the record afterwards."""
    # Given a file downloaded twice (the first record superseded), and a cancelled download
    file, other = files_of(http, count=2)
    for _ in range(2):
        (transfer,) = enqueue(http, "lossless_lover", file).json()["enqueued"]
        ended(http, transfer)
    fake.transfer_duration = 60.0
    (cancelled,) = enqueue(http, "lossless_lover", other).json()["enqueued"]
    http.delete(f"{DOWNLOADS}/lossless_lover/{cancelled['id']}")
    # Then the two successes are counted, the cancelled one is not
    assert fake.completed_downloads() == [("lossless_lover", file["filename"])] * 2
