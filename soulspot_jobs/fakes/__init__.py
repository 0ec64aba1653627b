"""Fake slskd, MusicBrainz and Spotify servers on loopback, for the tests and the demo.

They speak the endpoints the clients use with realistic JSON, and take fault controls (outages,
failing requests, 429 with ``Retry-After``, latency) from Python and over HTTP.
"""
