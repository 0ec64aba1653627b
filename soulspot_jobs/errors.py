"""The project's error tree: every error soulspot-jobs raises on purpose derives from one root."""


class SoulspotJobsError(Exception):
    """Root of every error raised by soulspot-jobs."""


class ConfigurationError(SoulspotJobsError, ValueError):
    """A setting or a constructor argument has a value soulspot-jobs cannot work with."""
