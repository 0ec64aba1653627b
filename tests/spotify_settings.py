"""Settings of a Spotify client talking to a fake Spotify (its API and accounts service on one
loopback server), shared by the client, actor, fake and design-example tests."""

from __future__ import annotations

from soulspot_jobs.fakes.spotify import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakeSpotify
from soulspot_jobs.settings import SpotifySettings


def spotify_settings(
    fake: FakeSpotify, secret: str = DEFAULT_CLIENT_SECRET, refresh_token: str = ""
) -> SpotifySettings:
    """The fake's app credentials (or ``secret``), ``refresh_token`` for a user, 5 s timeout."""
    return SpotifySettings(
        api_url=fake.url,
        accounts_url=fake.url,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=secret,
        refresh_token=refresh_token,
        timeout=5,
    )
