"""The music the fake upstreams know about, shared so that a job chain works end to end:
the fake Spotify lists these tracks in its playlists, fake slskd peers share files of them, and
the fake MusicBrainz has their recordings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogTrack:
    """One song, with the identifiers every upstream uses for it."""

    artist: str
    title: str
    album: str
    #: Length in milliseconds.
    duration_ms: int
    isrc: str
    spotify_id: str
    #: MusicBrainz recording id (a UUID).
    mbid: str
    release_mbid: str
    release_date: str


#: The default catalog of every fake.
CATALOG: tuple[CatalogTrack, ...] = (
    CatalogTrack(
        "Daft Punk",
        "Around the World",
        "Homework",
        429_000,
        "GBDUW9700002",
        "1pKYYY0dkg23sQQXi0Q5zN",
        "8c6f8e3a-2a6b-4d5e-9d1e-3c1f6a2b7d01",
        "5d1b5c2e-7f7a-4b8e-a6c4-0c2b9d1e4f11",
        "1997-01-20",
    ),
    CatalogTrack(
        "Massive Attack",
        "Teardrop",
        "Mezzanine",
        331_000,
        "GBAAA9800121",
        "67Hna13dNDkZvBpTXRIaOJ",
        "2b4c6d8e-0f1a-4b3c-8d5e-7f9a1b3c5d02",
        "6e2c6d3f-8a8b-4c9f-b7d5-1d3c0e2f5a12",
        "1998-04-20",
    ),
    CatalogTrack(
        "Björk",
        "Jóga",
        "Homogenic",
        305_000,
        "GBAJE9700094",
        "7bLkp4Sf9nUaU2ZS1gtb2Z",
        "3c5d7e9f-1a2b-4c4d-9e6f-8a0b2c4d6e03",
        "7f3d7e4a-9b9c-4d0a-c8e6-2e4d1f3a6b13",
        "1997-09-22",
    ),
    CatalogTrack(
        "Portishead",
        "Glory Box",
        "Dummy",
        306_000,
        "GBUM79400123",
        "3Ty7OTBNSigGEpeW2PqcsC",
        "4d6e8f0a-2b3c-4d5e-af70-9b1c3d5e7f04",
        "8a4e8f5b-0cad-4e1b-d9f7-3f5e2a4b7c14",
        "1994-08-22",
    ),
    CatalogTrack(
        "Radiohead",
        "Paranoid Android",
        "OK Computer",
        387_000,
        "GBAYE9701193",
        "6LgJvl0Xdtc73RJ1mmpotq",
        "5e7f9a1b-3c4d-4e6f-b081-0c2d4e6f8a05",
        "9b5f9a6c-1dbe-4f2c-e0a8-4a6f3b5c8d15",
        "1997-05-21",
    ),
)
