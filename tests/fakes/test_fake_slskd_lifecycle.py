"""The fake slskd's server connection and life cycle as slskd 0.26.0's: the server state and
session routes, being logged out of Soulseek, and restarting. Each test names the slskd
source it follows."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import httpx

from soulspot_jobs.fakes.slskd import FakeSlskd
from tests.fakes.slskd_support import (
    BATCHES,
    DOWNLOADS,
    KEY,
    QUERY,
    completed_search,
    ended,
    enqueue,
    enqueue_batch,
    files_of,
    listed_ids,
    transfer_by_id,
)
from tests.polling import poll, wait_until

LOGGED_OUT_SEARCH = (
    "The server connection must be connected and logged in to perform a search"
    " (currently: Connected)"
)
LOGGED_OUT_ENQUEUE = (
    "The server connection must be connected and logged in to fetch user endpoint"
    " (currently: Connected)"
)


def answers(http: httpx.Client) -> bool:
    """The fake accepts connections."""
    try:
        http.get("/api/v0/session")
    except httpx.TransportError:
        return False
    return True


# -- server and session ---------------------------------------------------------------------------


def test_the_server_state_reads_connected_and_logged_in(http: httpx.Client) -> None:
    """``ServerController.Get`` answers ``State.Server``, a ``ServerState`` (``Core/State.cs``:
    no user name; its endpoint written by ``IPEndPointConverter`` as a string)."""
    assert http.get("/api/v0/server").json() == {
        "address": "vps.slsknet.org",
        "ipEndPoint": "208.76.170.59:2271",
        "state": "Connected, LoggedIn",
        "isConnected": True,
        "isConnecting": False,
        "isLoggedIn": True,
        "isLoggingIn": False,
        "isTransitioning": False,
    }


def test_the_session_answers_200_with_a_good_key_and_401_without(fake: FakeSlskd) -> None:
    """``SessionController.Check`` is ``Ok()`` behind the API key policy."""
    good = httpx.get(f"{fake.url}/api/v0/session", headers={"X-API-Key": KEY})
    bad = httpx.get(f"{fake.url}/api/v0/session", headers={"X-API-Key": "nope"})
    server = httpx.get(f"{fake.url}/api/v0/server")
    assert (good.status_code, good.content) == (200, b"")
    assert (bad.status_code, bad.content) == (401, b"")
    assert server.status_code == 401


# -- logged out -----------------------------------------------------------------------------------


def test_logged_out_the_server_state_says_so(fake: FakeSlskd, http: httpx.Client) -> None:
    """``ServerState.IsLoggedIn`` is the ``LoggedIn`` flag of the client's state; address and
    endpoint are null (left out) once disconnected (``Application.Client_StateChanged``)."""
    assert http.post("/_faults/logged_out", json={"value": True}).status_code == 204
    connected = http.get("/api/v0/server").json()
    fake.logged_out(state="Disconnected")
    disconnected = http.get("/api/v0/server").json()
    assert (connected["state"], connected["isConnected"], connected["isLoggedIn"]) == (
        "Connected",
        True,
        False,
    )
    assert disconnected == {
        "state": "Disconnected",
        "isConnected": False,
        "isConnecting": False,
        "isLoggedIn": False,
        "isLoggingIn": False,
        "isTransitioning": False,
    }
    assert http.post("/_faults/logged_out", json={"value": False}).status_code == 204
    assert http.get("/api/v0/server").json()["isLoggedIn"] is True


def test_logged_out_a_search_answers_409_and_is_kept_as_errored(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """``SearchService.StartAsync`` inserts the search, Soulseek.NET's ``SearchAsync`` throws
    ``InvalidOperationException`` (``SearchesController.Post``: 409), and the search is saved
    ``Completed, Errored``, so its id is taken."""
    fake.logged_out()
    search_id = str(uuid.uuid4())
    refused = http.post("/api/v0/searches", json={"id": search_id, "searchText": QUERY})
    assert (refused.status_code, refused.json()) == (409, LOGGED_OUT_SEARCH)
    assert refused.headers["content-type"] == "application/json"
    kept = http.get(f"/api/v0/searches/{search_id}").json()
    assert (kept["state"], kept["responseCount"], kept["endedAt"]) == (
        "Completed, Errored",
        0,
        kept["startedAt"],
    )
    assert fake.search_requests == []
    # And once logged in again, the same id is refused by the database
    fake.logged_out(False)
    again = http.post("/api/v0/searches", json={"id": search_id, "searchText": QUERY})
    assert again.status_code == 500


def test_logged_out_enqueues_answer_500_and_running_transfers_go_on(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """``EnqueueAsync`` and ``EnqueueBatchAsync`` ask Soulseek.NET for the user's endpoint
    first (``GetUserEndPointAsync`` throws when not logged in): 500 with the message. Transfers
    under way are not touched (``DownloadService``)."""
    # Given a download under way
    fake.transfer_duration = 1.0
    first, second = files_of(http, count=2)
    (running,) = enqueue(http, "lossless_lover", first).json()["enqueued"]
    # When slskd is logged out, ordered over HTTP
    assert http.post("/_faults/logged_out", json={}).status_code == 204
    # Then both enqueue endpoints answer 500 with the library's message, and so does a
    # queue position
    per_user = enqueue(http, "lossless_lover", second)
    batch = enqueue_batch(http, "lossless_lover", second)
    position = http.get(f"{DOWNLOADS}/lossless_lover/{running['id']}/position")
    assert (per_user.status_code, per_user.json()) == (500, LOGGED_OUT_ENQUEUE)
    assert (batch.status_code, batch.json()) == (500, LOGGED_OUT_ENQUEUE)
    assert position.status_code == 500
    assert position.json().startswith("The server connection must be Connected and LoggedIn")
    # And the running download still succeeds
    assert ended(http, running)["state"] == "Completed, Succeeded"
    # And clear logs slskd in again
    assert http.post("/_faults/clear", json={}).status_code == 204
    assert enqueue_batch(http, "lossless_lover", second).status_code == 201


def test_bad_logged_out_options_answer_400(http: httpx.Client) -> None:
    assert http.post("/_faults/logged_out", json={"value": "yes"}).status_code == 400
    assert http.post("/_faults/logged_out", json={"state": "Kicked"}).status_code == 400
    assert http.post("/_faults/restart", json={"downtime": -1}).status_code == 400


# -- restarting -----------------------------------------------------------------------------------


def test_a_restart_fails_what_ran_and_enqueues_the_downloads_again(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """``Application.StartAsync`` ends every unfinished transfer ``Completed, Errored``
    ("Application shut down") and every unfinished search ``Completed, TimedOut`` with no
    responses; ``Client_LoggedIn`` enqueues the downloads again (``EnqueueAsync``, which
    supersedes the old records)."""
    # Given a download under way, one ended, a search ended and one under way
    running = files_of(http)[0]
    done_search = completed_search(http)
    fake.transfer_duration = 60.0
    (transfer,) = enqueue(http, "lossless_lover", running).json()["enqueued"]
    fake.transfer_duration = 0.0
    (over,) = enqueue(http, "old_rips", {"filename": "@@x\\y.mp3", "size": 1}).json()["enqueued"]
    fake.transfer_duration = 0.3
    fake.search_duration = 60.0
    running_search = http.post("/api/v0/searches", json={"searchText": QUERY}).json()
    # When slskd restarts at once
    fake.restart()
    # Then the download under way was shut down, the ended one left alone
    old = transfer_by_id(http, transfer["id"])
    assert (old["state"], old["exception"]) == ("Completed, Errored", "Application shut down")
    assert old["removed"] is True  # superseded by the new enqueue
    assert transfer_by_id(http, over["id"])["state"] == "Completed, Rejected"
    # And the search under way timed out empty, the ended one kept its responses
    timed_out = http.get(f"/api/v0/searches/{running_search['id']}").json()
    assert (timed_out["state"], timed_out["responseCount"], timed_out["fileCount"]) == (
        "Completed, TimedOut",
        0,
        0,
    )
    assert "endedAt" in timed_out
    assert http.get(f"/api/v0/searches/{done_search['id']}/responses").json()
    # And the download was enqueued again, under a new id, and runs to its end
    [new_id] = listed_ids(http.get(f"{DOWNLOADS}/lossless_lover").json())
    assert new_id != transfer["id"]
    new = transfer_by_id(http, new_id)
    assert (new["filename"], new["removed"]) == (running["filename"], False)
    assert "batchId" not in new
    assert ended(http, new)["state"] == "Completed, Succeeded"
    assert fake.restarts == 1
    assert fake.completed_downloads() == [("lossless_lover", running["filename"])]


def test_a_restart_over_http_refuses_connections_for_its_downtime_then_resumes(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """``Application.cs``: downloads are enqueued again once slskd is up and logged in."""
    # Given a download under way
    fake.transfer_duration = 60.0
    (transfer,) = enqueue(http, "lossless_lover", files_of(http)[0]).json()["enqueued"]
    fake.transfer_duration = 0.3
    # When slskd restarts with a downtime, ordered over HTTP
    assert http.post("/_faults/restart", json={"downtime": 1.0}).status_code == 204
    # Then it refuses connections for a while, then answers again
    wait_until(lambda: not answers(http), "the fake to refuse connections", timeout=5)
    wait_until(lambda: answers(http), "the fake to answer again", timeout=10)
    # And the download was enqueued again no sooner than the downtime after it was shut down
    new_ids = poll(
        lambda: listed_ids(http.get(DOWNLOADS).json()),
        lambda ids: ids and ids != [transfer["id"]],
    )
    [new_id] = new_ids
    old = transfer_by_id(http, transfer["id"])
    new = transfer_by_id(http, new_id)
    shut_down = datetime.fromisoformat(old["endedAt"])
    assert datetime.fromisoformat(new["requestedAt"]) - shut_down >= timedelta(seconds=0.9)
    assert ended(http, new)["state"] == "Completed, Succeeded"


def test_a_restart_while_logged_out_enqueues_again_only_once_logged_in(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """``Application.Client_LoggedIn`` is where the downloads are enqueued again."""
    # Given a download under way, and slskd unable to log in
    fake.transfer_duration = 60.0
    (transfer,) = enqueue(http, "lossless_lover", files_of(http)[0]).json()["enqueued"]
    fake.logged_out()
    # When it restarts, then nothing is enqueued while it is logged out
    fake.restart()
    assert listed_ids(http.get(DOWNLOADS).json()) == [transfer["id"]]
    # And once it logs in, the download is enqueued again
    fake.logged_out(False)
    [new_id] = listed_ids(http.get(DOWNLOADS).json())
    assert new_id != transfer["id"]


def test_a_restart_skips_the_downloads_of_a_peer_it_cannot_reach(
    fake: FakeSlskd, http: httpx.Client
) -> None:
    """``Application.Client_LoggedIn`` logs a user's failed enqueue and goes on."""
    fake.transfer_duration = 60.0
    flac = files_of(http)[0]
    mp3 = files_of(http, "old_rips")[0]
    enqueue(http, "lossless_lover", flac)
    enqueue(http, "old_rips", mp3)
    fake.peers_offline("old_rips")
    fake.restart()
    everything = http.get(DOWNLOADS, params={"includeRemoved": "true"}).json()
    assert {group["username"]: len(listed_ids(group)) for group in everything} == {
        "lossless_lover": 2,
        "old_rips": 1,
    }


def test_a_batch_survives_a_restart(fake: FakeSlskd, http: httpx.Client) -> None:
    """Batches are database records (``BatchService``): a restart keeps them."""
    batch = enqueue_batch(http, "lossless_lover", files_of(http)[0]).json()["batch"]
    fake.restart()
    assert http.get(f"{BATCHES}/{batch['id']}").status_code == 200
