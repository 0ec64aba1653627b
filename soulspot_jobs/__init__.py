"""soulspot-jobs: background jobs for SoulSpot Bridge behind cluster-wide circuit breakers."""

__version__ = "0.1.0"
