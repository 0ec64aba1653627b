"""What the fake slskd's tests share: the key, a catalog query and short ways to search,
enqueue (per user and in a batch) and read transfers over HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from soulspot_jobs.fakes.catalog import CATALOG
from tests.polling import poll

KEY = "test-key"


TRACK = CATALOG[0]
QUERY = f"{TRACK.artist} - {TRACK.title}"
DOWNLOADS = "/api/v0/transfers/downloads"
BATCHES = f"{DOWNLOADS}/batches"


def completed_search(http: httpx.Client, query: str = QUERY) -> dict[str, Any]:
    search_id = http.post("/api/v0/searches", json={"searchText": query}).json()["id"]
    return poll(lambda: http.get(f"/api/v0/searches/{search_id}").json(), lambda s: "endedAt" in s)


def files_of(
    http: httpx.Client, username: str = "lossless_lover", count: int = 1
) -> list[dict[str, Any]]:
    """The audio files ``username`` answers searches for the first ``count`` catalog tracks
    with, one per track (the searches run side by side)."""
    queries = [f"{track.artist} - {track.title}" for track in CATALOG[:count]]
    ids = [http.post("/api/v0/searches", json={"searchText": q}).json()["id"] for q in queries]
    files = []
    for search_id in ids:
        poll(lambda i=search_id: http.get(f"/api/v0/searches/{i}").json(), lambda s: "endedAt" in s)
        responses = http.get(f"/api/v0/searches/{search_id}/responses").json()
        response = next(r for r in responses if r["username"] == username)
        files.append(response["files"][0])
    return files


def enqueue(http: httpx.Client, username: str, *files: dict[str, Any]) -> httpx.Response:
    body = [{"filename": file["filename"], "size": file["size"]} for file in files]
    return http.post(f"{DOWNLOADS}/{username}", json=body)


def enqueue_batch(
    http: httpx.Client, username: str, *files: dict[str, Any], **fields: Any
) -> httpx.Response:
    items = [{"filename": file["filename"], "size": file["size"]} for file in files]
    return http.post(BATCHES, json={"username": username, "files": items, **fields})


def transfer_by_id(http: httpx.Client, transfer_id: str, username: str = "anyone") -> Any:
    return http.get(f"{DOWNLOADS}/{username}/{transfer_id}").json()


def ended(http: httpx.Client, transfer: dict[str, Any]) -> dict[str, Any]:
    """The transfer, read until it has ended."""
    return poll(lambda: transfer_by_id(http, transfer["id"]), lambda t: "endedAt" in t)


def listed_ids(listing: Any) -> list[str]:
    """The transfer ids in a ``GET .../downloads`` answer (a list of users, or one user)."""
    users = listing if isinstance(listing, list) else [listing]
    return [
        item["id"]
        for user in users
        for directory in user["directories"]
        for item in directory["files"]
    ]
