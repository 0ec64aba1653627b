"""The music the fake upstreams know about, shared so that a job chain works end to end:
the fake Spotify lists these tracks in its playlists, fake slskd peers share files of them, and
the fake MusicBrainz has their recordings."""

from __future__ import annotations

import hashlib
import uuid
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


def _base62_id(*parts: str) -> str:
    """A stable 22-character base-62 id (Spotify's id format) derived from ``parts``."""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    number = int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:17], "big")
    chars = []
    for _ in range(22):
        number, digit = divmod(number, 62)
        chars.append(alphabet[digit])
    return "".join(chars)


def _mixtape_track(
    number: int, artist: str, title: str, album: str, seconds: int, release_date: str
) -> CatalogTrack:
    """A catalog track whose ISRC, Spotify id and MusicBrainz ids derive from what it is."""
    key = f"mixtape/{artist}/{title}"
    return CatalogTrack(
        artist,
        title,
        album,
        seconds * 1000,
        f"QZDMO{release_date[2:4]}{number:05d}",
        _base62_id(key),
        str(uuid.uuid5(uuid.NAMESPACE_URL, f"{key}/recording")),
        str(uuid.uuid5(uuid.NAMESPACE_URL, f"{key}/release")),
        release_date,
    )


#: Fifty more songs, each by its own artist and none sharing its title: the demo's playlist.
#: (artist, title, album, length in seconds, release date)
MIXTAPE: tuple[CatalogTrack, ...] = tuple(
    _mixtape_track(number, *song)
    for number, song in enumerate(
        (
            ("Air", "Sexy Boy", "Moon Safari", 298, "1998-01-16"),
            ("Moby", "Porcelain", "Play", 241, "1999-05-17"),
            ("Zero 7", "Destiny", "Simple Things", 335, "2001-04-23"),
            ("Thievery Corporation", "Lebanese Blonde", "The Mirror Conspiracy", 287, "2000-03-07"),
            ("Morcheeba", "The Sea", "Big Calm", 351, "1998-03-16"),
            ("Tricky", "Overcome", "Maxinquaye", 275, "1995-02-20"),
            ("Lamb", "Gorecki", "Lamb", 390, "1996-09-30"),
            ("Sneaker Pimps", "Six Underground", "Becoming X", 229, "1996-08-19"),
            ("Hooverphonic", "Mad About You", "The Magnificent Tree", 222, "2000-05-08"),
            ("Goldfrapp", "Lovely Head", "Felt Mountain", 229, "2000-09-11"),
            ("Röyksopp", "Eple", "Melody A.M.", 221, "2001-09-03"),
            ("Boards of Canada", "Roygbiv", "Music Has the Right to Children", 151, "1998-04-20"),
            ("Aphex Twin", "Avril 14th", "Drukqs", 125, "2001-10-22"),
            ("The Chemical Brothers", "Hey Boy Hey Girl", "Surrender", 290, "1999-06-21"),
            ("Underworld", "Cowgirl", "Dubnobasswithmyheadman", 509, "1994-01-24"),
            ("Leftfield", "Open Up", "Leftism", 413, "1995-01-30"),
            ("Orbital", "Halcyon", "Orbital 2", 567, "1993-05-24"),
            ("The Prodigy", "Breathe", "The Fat of the Land", 335, "1997-06-30"),
            ("DJ Shadow", "Midnight in a Perfect World", "Endtroducing", 299, "1996-09-16"),
            ("UNKLE", "Rabbit in Your Headlights", "Psyence Fiction", 524, "1998-09-28"),
            ("Bonobo", "Kiara", "Black Sands", 229, "2010-03-29"),
            ("Four Tet", "Angel Echoes", "There Is Love in You", 240, "2010-01-25"),
            ("Burial", "Archangel", "Untrue", 238, "2007-11-05"),
            ("Caribou", "Sun", "Swim", 392, "2010-04-19"),
            ("Jon Hopkins", "Open Eye Signal", "Immunity", 468, "2013-06-03"),
            ("Moderat", "Bad Kingdom", "II", 278, "2013-08-02"),
            ("Nicolas Jaar", "Space Is Only Noise", "Space Is Only Noise", 270, "2011-01-31"),
            ("The xx", "Intro", "xx", 128, "2009-08-17"),
            ("Jamie xx", "Gosh", "In Colour", 293, "2015-05-29"),
            ("Groove Armada", "At the River", "Vertigo", 321, "1999-03-22"),
            ("St Germain", "Rose Rouge", "Tourist", 406, "2000-05-08"),
            ("Nightmares on Wax", "You Wish", "Mind Elevation", 281, "2002-09-02"),
            ("Mazzy Star", "Fade Into You", "So Tonight That I Might See", 295, "1993-10-05"),
            ("Cocteau Twins", "Heaven or Las Vegas", "Heaven or Las Vegas", 298, "1990-09-17"),
            ("Slowdive", "Alison", "Souvlaki", 230, "1993-06-01"),
            ("My Bloody Valentine", "Sometimes", "Loveless", 319, "1991-11-04"),
            ("Beach House", "Myth", "Bloom", 258, "2012-05-15"),
            ("Grimes", "Oblivion", "Visions", 251, "2012-01-31"),
            ("Cut Copy", "Lights and Music", "In Ghost Colours", 302, "2008-03-15"),
            ("LCD Soundsystem", "All My Friends", "Sound of Silver", 454, "2007-03-12"),
            ("Hot Chip", "Over and Over", "The Warning", 350, "2006-05-22"),
            ("Justice", "Genesis", "Cross", 234, "2007-06-11"),
            ("Kraftwerk", "Computer Love", "Computer World", 435, "1981-05-10"),
            ("New Order", "Age of Consent", "Power Corruption and Lies", 315, "1983-05-02"),
            ("Depeche Mode", "Enjoy the Silence", "Violator", 373, "1990-03-19"),
            ("Pet Shop Boys", "West End Girls", "Please", 281, "1986-03-24"),
            ("Everything but the Girl", "Missing", "Amplified Heart", 292, "1994-06-13"),
            ("Sade", "No Ordinary Love", "Love Deluxe", 438, "1992-10-26"),
            ("Cinematic Orchestra", "To Build a Home", "Ma Fleur", 371, "2007-05-07"),
            ("Lemon Jelly", "Nice Weather for Ducks", "Lost Horizons", 320, "2002-10-28"),
        ),
        start=1,
    )
)


def generated_catalog(count: int) -> tuple[CatalogTrack, ...]:
    """``count`` distinct made-up songs, ten per artist, for load runs: a real backlog is of
    different songs, not the same few over and over (which would have every job download the
    same file from the same peer at once). Each name has its own word (``S00012``, ``A00001``),
    so a search for one song finds it alone. At most 100,000."""
    if not 0 <= count <= 100_000:
        raise ValueError(f"a generated catalog holds 0 to 100,000 songs, not {count}")
    return tuple(
        _mixtape_track(
            number,
            f"Load Artist A{number // 10:05d}",
            f"Song S{number:05d}",
            f"Album L{number // 10:05d}",
            180 + number % 120,
            "2001-01-01",
        )
        for number in range(count)
    )
