"""The demo's fifty-track playlist: listed by the fake Spotify, and every track of it found on
the fake slskd by its search text and on the fake MusicBrainz by its ISRC, through the clients.
The load bench's generated catalog: distinct songs, each found the same way among thousands."""

from __future__ import annotations

import pytest

from soulspot_jobs.clients.musicbrainz import MusicBrainzClient
from soulspot_jobs.clients.slskd import SlskdClient, choose_best
from soulspot_jobs.clients.spotify import SpotifyClient
from soulspot_jobs.errors import NotFoundError
from soulspot_jobs.fakes.catalog import CATALOG, MIXTAPE, generated_catalog
from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.fakes.slskd import FakeSlskd
from soulspot_jobs.fakes.spotify import (
    MIXTAPE_PLAYLIST,
    FakeSpotify,
)
from soulspot_jobs.settings import MusicBrainzSettings, SlskdSettings
from tests.polling import wait_until
from tests.spotify_settings import spotify_settings


def test_the_mixtape_playlist_lists_fifty_distinct_tracks_with_valid_ids() -> None:
    # Given a fake Spotify whose catalog is the mixtape
    with FakeSpotify(catalog=MIXTAPE) as fake:
        client = SpotifyClient(spotify_settings(fake))
        try:
            # When the playlist is read through the client
            tracks = client.get_playlist_tracks(MIXTAPE_PLAYLIST)
        finally:
            client.close()

    # Then it has the fifty tracks, each with its own Spotify id and ISRC
    assert len(tracks) == len(MIXTAPE) == 50
    assert [track.id for track in tracks] == [song.spotify_id for song in MIXTAPE]
    assert len({track.isrc for track in tracks}) == 50
    assert all(len(track.id) == 22 and track.id.isalnum() for track in tracks)
    assert len(MIXTAPE_PLAYLIST) == 22 and MIXTAPE_PLAYLIST.isalnum()


def test_a_fake_spotify_without_mixtape_tracks_has_no_mixtape_playlist() -> None:
    # Given a fake Spotify on the default catalog
    with FakeSpotify(catalog=CATALOG) as fake:
        client = SpotifyClient(spotify_settings(fake))
        try:
            # When the mixtape playlist is asked for, then it is not found
            with pytest.raises(NotFoundError):
                client.get_playlist_tracks(MIXTAPE_PLAYLIST)
        finally:
            client.close()


def test_every_mixtape_track_is_found_on_slskd_by_its_search_text_and_only_it() -> None:
    # Given a fake slskd sharing the mixtape, searches completing at once
    with FakeSlskd(catalog=MIXTAPE, search_duration=0.0) as fake:
        client = SlskdClient(SlskdSettings(url=fake.url, api_key="test-key", timeout=5))
        try:
            for track in MIXTAPE:
                # When the track's "Artist - Title" is searched
                search = client.start_search(f"{track.artist} - {track.title}")
                wait_until(lambda s=search: client.get_search(s.id).is_complete, "the search")
                best = choose_best(client.get_responses(search.id), max_candidates=3)

                # Then files of that track, and of no other, are found
                assert best, track
                assert all(f"\\{track.album}\\" in c.filename for c in best), (track, best)
        finally:
            client.close()


def test_every_mixtape_track_is_found_on_musicbrainz_by_its_isrc() -> None:
    # Given a fake MusicBrainz holding the mixtape (no rate rule: these are lookups in a row)
    with FakeMusicBrainz(catalog=MIXTAPE, min_interval=0) as fake:
        client = MusicBrainzClient(MusicBrainzSettings(url=fake.url, timeout=5))
        try:
            for track in MIXTAPE:
                # When its ISRC is looked up, then its recording is the one found
                [recording] = client.lookup_isrc(track.isrc)
                assert recording.id == track.mbid
                assert recording.title == track.title
        finally:
            client.close()


def test_a_generated_catalog_has_distinct_songs_each_found_on_slskd_and_musicbrainz() -> None:
    # Given a generated catalog of five thousand songs, shared by the fake slskd and MusicBrainz
    catalog = generated_catalog(5_000)
    assert len({(t.artist, t.title) for t in catalog}) == len({t.isrc for t in catalog}) == 5_000
    assert len({t.mbid for t in catalog}) == len({t.spotify_id for t in catalog}) == 5_000
    with (
        FakeSlskd(catalog=catalog, search_duration=0.0) as slskd,
        FakeMusicBrainz(catalog=catalog, min_interval=0) as musicbrainz,
    ):
        files = SlskdClient(SlskdSettings(url=slskd.url, api_key="test-key", timeout=5))
        metadata = MusicBrainzClient(MusicBrainzSettings(url=musicbrainz.url, timeout=5))
        try:
            for track in (catalog[0], catalog[1234], catalog[-1]):
                # When a song is searched by its text on slskd, and by artist, title and ISRC
                # on MusicBrainz
                search = files.start_search(f"{track.artist} - {track.title}")
                wait_until(lambda s=search: files.get_search(s.id).is_complete, "the search")
                best = choose_best(files.get_responses(search.id), max_candidates=3)
                found = metadata.search_recordings(track.artist, track.title)
                [by_isrc] = metadata.lookup_isrc(track.isrc)

                # Then that song's files and recording are found, and no other song's
                assert best and all(f"{track.title}." in c.filename for c in best), (track, best)
                assert found[0].id == by_isrc.id == track.mbid
                assert all(r.title.startswith(track.title) for r in found), found
        finally:
            files.close()
            metadata.close()
