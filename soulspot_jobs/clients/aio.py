"""The async clients under the names the circuit-breaker design uses, with their wrappers.

``from soulspot_jobs.clients.aio import SpotifyClient`` gives the async Spotify client
(:class:`~soulspot_jobs.clients.spotify.AsyncSpotifyClient`), so the design's examples read as
written::

    base_client = SpotifyClient(settings.spotify)
    protected_client = CircuitBreakerSpotifyClient(base_client, settings)
    playlist = await protected_client.get_playlist(playlist_id, token)

The sync clients keep these names in their own modules (``clients.spotify.SpotifyClient``...).
"""

from soulspot_jobs.clients.musicbrainz import AsyncMusicBrainzClient as MusicBrainzClient
from soulspot_jobs.clients.musicbrainz import CircuitBreakerMusicBrainzClient
from soulspot_jobs.clients.slskd import AsyncSlskdClient as SlskdClient
from soulspot_jobs.clients.slskd import CircuitBreakerSlskdClient
from soulspot_jobs.clients.spotify import AsyncSpotifyClient as SpotifyClient
from soulspot_jobs.clients.spotify import CircuitBreakerSpotifyClient

__all__ = [
    "CircuitBreakerMusicBrainzClient",
    "CircuitBreakerSlskdClient",
    "CircuitBreakerSpotifyClient",
    "MusicBrainzClient",
    "SlskdClient",
    "SpotifyClient",
]
