"""The jobs SoulSpot users run, one module per family, each actor tagged with its service.

* :mod:`.downloads`: ``search_track``, ``poll_download`` (``slskd-api``)
* :mod:`.metadata`: ``enrich_metadata`` (``musicbrainz-api``)
* :mod:`.playlists`: ``import_playlist`` (``spotify-api``)
"""
