"""The fake slskd driven by the real third-party client ``slskd-api``: if that client, written
against real slskd, works with the fake, the fake speaks slskd's routes and shapes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import slskd_api

from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.slskd import PEERS, FakeSlskd
from tests.polling import poll

KEY = "conformance-key"
TRACK = CATALOG[2]
QUERY = f"{TRACK.artist} {TRACK.title}"


@pytest.fixture
def fake() -> Iterator[FakeSlskd]:
    with FakeSlskd(api_key=KEY, search_duration=0.2, transfer_duration=0.6) as server:
        yield server


@pytest.fixture
def api(fake: FakeSlskd) -> slskd_api.SlskdClient:
    return slskd_api.SlskdClient(fake.url, api_key=KEY, timeout=5)


def ended_search(api: slskd_api.SlskdClient, query: str = QUERY) -> dict[str, Any]:
    started = api.searches.search_text(query)
    return poll(lambda: api.searches.state(started["id"]), lambda s: "endedAt" in s)


def test_slskd_api_searches_reads_the_state_the_list_and_the_responses(
    api: slskd_api.SlskdClient,
) -> None:
    # Given a search started through slskd-api (its own id and defaults)
    started = api.searches.search_text(QUERY)
    assert (started["state"], started["isComplete"]) == ("InProgress", False)
    # When it has ended
    search = poll(lambda: api.searches.state(started["id"]), lambda s: "endedAt" in s)
    # Then its state, the list of searches and its responses read as slskd-api expects
    assert search["state"] == "Completed, ResponseLimitReached"
    assert [s["id"] for s in api.searches.get_all()] == [started["id"]]
    responses = api.searches.search_responses(started["id"])
    assert [r["username"] for r in responses] == [peer.username for peer in PEERS]
    assert api.searches.state(started["id"], includeResponses=True)["responses"] == responses
    assert all(file["filename"].startswith("@@") for r in responses for file in r["files"])


def test_slskd_api_stops_and_deletes_a_search(fake: FakeSlskd, api: slskd_api.SlskdClient) -> None:
    fake.search_duration = 30.0
    started = api.searches.search_text(QUERY)
    assert api.searches.stop(started["id"]) is True
    assert api.searches.state(started["id"])["state"] == "Completed, Cancelled"
    assert api.searches.delete(started["id"]) is True
    with pytest.raises(requests.HTTPError) as caught:
        api.searches.state(started["id"])
    assert caught.value.response.status_code == 404


def test_slskd_api_enqueues_lists_follows_and_cancels_downloads(
    fake: FakeSlskd, api: slskd_api.SlskdClient
) -> None:
    # Given the files two peers answered with (slskd-api posts the whole file objects), and
    # downloads slow enough to cancel one
    fake.transfer_duration = 2.0
    search = ended_search(api)
    responses = {r["username"]: r for r in api.searches.search_responses(search["id"])}
    flac = responses["lossless_lover"]["files"][:1]
    mp3 = responses["mp3 archive"]["files"][:1]
    # When it enqueues them
    assert api.transfers.enqueue("lossless_lover", flac) is True
    assert api.transfers.enqueue("mp3 archive", mp3) is True
    # Then every listing finds them: per user, all (with its trailing slash), one by id
    user = api.transfers.get_downloads("mp3 archive")
    [transfer] = user["directories"][0]["files"]
    assert (user["username"], transfer["filename"]) == ("mp3 archive", mp3[0]["filename"])
    everyone = api.transfers.get_all_downloads()
    assert sorted(group["username"] for group in everyone) == ["lossless_lover", "mp3 archive"]
    assert api.transfers.get_download("mp3 archive", transfer["id"])["id"] == transfer["id"]
    # And the MP3 is cancelled while the FLAC is followed to success
    assert api.transfers.cancel_download("mp3 archive", transfer["id"]) is True
    cancelled = api.transfers.get_download("mp3 archive", transfer["id"])
    assert (cancelled["state"], cancelled["exception"]) == (
        "Completed, Cancelled",
        "Transfer cancelled",
    )
    [flac_transfer] = api.transfers.get_downloads("lossless_lover")["directories"][0]["files"]
    done = poll(
        lambda: api.transfers.get_download("lossless_lover", flac_transfer["id"]),
        lambda t: t["state"].startswith("Completed"),
    )
    assert done["state"] == "Completed, Succeeded"


def test_slskd_api_reads_a_queue_position(fake: FakeSlskd, api: slskd_api.SlskdClient) -> None:
    # Given a download from the busy peer, queued at the peer
    fake.transfer_duration = 4.0
    search = ended_search(api)
    [busy] = [
        r for r in api.searches.search_responses(search["id"]) if r["username"] == "slow_peer"
    ]
    assert api.transfers.enqueue("slow_peer", busy["files"][:1]) is True
    [transfer] = api.transfers.get_downloads("slow_peer")["directories"][0]["files"]
    poll(
        lambda: api.transfers.get_download("slow_peer", transfer["id"]),
        lambda t: t["state"] == "Queued, Remotely",
    )
    # When slskd-api asks for its place, then it is behind the peer's 37 other uploads
    assert api.transfers.get_queue_position("slow_peer", transfer["id"]) == 38


def test_slskd_api_sees_an_offline_peers_enqueue_fail_with_500(
    fake: FakeSlskd, api: slskd_api.SlskdClient
) -> None:
    search = ended_search(api)
    [response] = [
        r for r in api.searches.search_responses(search["id"]) if r["username"] == "old_rips"
    ]
    fake.peers_offline("old_rips")
    with pytest.raises(requests.HTTPError) as caught:
        api.transfers.enqueue("old_rips", response["files"][:1])
    assert caught.value.response.status_code == 500
    assert caught.value.response.json() == "User old_rips appears to be offline"


# -- what slskd 0.26.0 does beyond the happy path -------------------------------------------------


def test_slskd_api_reads_a_download_by_id_removes_it_and_lists_it_only_when_asked(
    fake: FakeSlskd, api: slskd_api.SlskdClient
) -> None:
    """``TransfersController.GetDownload`` finds by id alone; ``CancelDownloadAsync`` with
    ``remove`` soft-deletes an ended download; ``GetDownloadsAsync`` lists removed ones only
    with ``includeRemoved`` (``DownloadService.cs``)."""
    # Given a download through slskd-api that ended
    search = ended_search(api)
    [flac] = [
        r for r in api.searches.search_responses(search["id"]) if r["username"] == PEERS[0].username
    ]
    assert api.transfers.enqueue("lossless_lover", flac["files"][:1]) is True
    [transfer] = api.transfers.get_downloads("lossless_lover")["directories"][0]["files"]
    # When it is read under another user's name, then it is found
    done = poll(
        lambda: api.transfers.get_download("somebody else", transfer["id"]),
        lambda t: t["state"].startswith("Completed"),
    )
    assert (done["username"], done["removed"]) == ("lossless_lover", False)
    # When slskd-api removes it
    assert api.transfers.cancel_download("lossless_lover", transfer["id"], remove=True) is True
    # Then it is still there by id, removed, and listed only when removed ones are asked for
    assert api.transfers.get_download("lossless_lover", transfer["id"])["removed"] is True
    assert api.transfers.get_all_downloads() == []
    [group] = api.transfers.get_all_downloads(includeRemoved=True)
    assert group["directories"][0]["files"][0]["id"] == transfer["id"]


def test_slskd_api_clears_the_completed_downloads(
    fake: FakeSlskd, api: slskd_api.SlskdClient
) -> None:
    """``TransfersController.ClearCompletedDownloads`` removes every ended download."""
    search = ended_search(api)
    [response] = [
        r for r in api.searches.search_responses(search["id"]) if r["username"] == "old_rips"
    ]
    api.transfers.enqueue("old_rips", response["files"][:1])
    poll(
        lambda: api.transfers.get_all_downloads()[0]["directories"][0]["files"][0],
        lambda t: t["state"].startswith("Completed"),
    )
    assert api.transfers.remove_completed_downloads() is True
    assert api.transfers.get_all_downloads() == []


def test_slskd_api_reads_the_server_state_and_the_session(
    fake: FakeSlskd, api: slskd_api.SlskdClient
) -> None:
    """``ServerController.Get`` (``Core/State.cs``) in slskd-api's ``ServerState`` shape, and
    ``SessionController.Check`` behind the API key."""
    state = api.server.state()
    assert set(state) == set(slskd_api.apis._types.ServerState.__annotations__)
    assert (state["state"], state["isLoggedIn"]) == ("Connected, LoggedIn", True)
    assert api.session.auth_valid() is True
    fake.logged_out()
    assert (api.server.state()["state"], api.server.state()["isLoggedIn"]) == ("Connected", False)
    stranger = slskd_api.SlskdClient(fake.url, api_key="wrong", timeout=5)
    with pytest.raises(requests.HTTPError) as caught:
        stranger.session.auth_valid()
    assert caught.value.response.status_code == 401


def test_slskd_api_sees_searches_and_enqueues_refused_while_logged_out(
    fake: FakeSlskd, api: slskd_api.SlskdClient
) -> None:
    """Soulseek.NET refuses to search or look a user up when not logged in:
    ``SearchesController.Post`` answers 409, ``TransfersController.EnqueueAsync`` 500."""
    search = ended_search(api)
    [response] = [
        r for r in api.searches.search_responses(search["id"]) if r["username"] == "old_rips"
    ]
    fake.logged_out()
    with pytest.raises(requests.HTTPError) as searching:
        api.searches.search_text(QUERY)
    with pytest.raises(requests.HTTPError) as enqueueing:
        api.transfers.enqueue("old_rips", response["files"][:1])
    assert searching.value.response.status_code == 409
    assert searching.value.response.json().startswith(
        "The server connection must be connected and logged in to perform a search"
    )
    assert enqueueing.value.response.status_code == 500
    assert "logged in to fetch user endpoint" in enqueueing.value.response.json()


def test_slskd_api_follows_a_download_through_a_restart(
    fake: FakeSlskd, api: slskd_api.SlskdClient
) -> None:
    """``Application.cs``: the download under way ends ``Application shut down`` and is
    enqueued again under a new id, the old record superseded (removed)."""
    fake.transfer_duration = 60.0
    search = ended_search(api)
    [response] = [
        r for r in api.searches.search_responses(search["id"]) if r["username"] == "old_rips"
    ]
    api.transfers.enqueue("old_rips", response["files"][:1])
    [old] = api.transfers.get_downloads("old_rips")["directories"][0]["files"]
    fake.transfer_duration = 0.6
    fake.restart()
    [new] = api.transfers.get_downloads("old_rips")["directories"][0]["files"]
    shut_down = api.transfers.get_download("old_rips", old["id"])
    assert new["id"] != old["id"] and new["filename"] == old["filename"]
    assert (shut_down["state"], shut_down["exception"], shut_down["removed"]) == (
        "Completed, Errored",
        "Application shut down",
        True,
    )
    everything = api.transfers.get_all_downloads(includeRemoved=True)
    assert len(everything[0]["directories"][0]["files"]) == 2
