"""Settings read from the environment and from ``.env``, validated once by :func:`load_settings`.

Nothing here is read at import time: build a :class:`Settings` (through :func:`load_settings`)
where the program starts and pass it on explicitly.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig, CircuitBreakerFields
from soulspot_jobs.errors import ConfigurationError
from soulspot_jobs.logging import redact_url

#: Log level names accepted in ``LOG_LEVEL`` (any case).
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
#: Prefix of every circuit breaker environment variable.
CIRCUIT_BREAKER_ENV_PREFIX = "CIRCUIT_BREAKER_"
#: Services with their own overrides, by breaker name; the value is the settings field name.
SERVICES = {
    "slskd-api": "slskd_api",
    "spotify-api": "spotify_api",
    "musicbrainz-api": "musicbrainz_api",
}


class SettingsError(ConfigurationError):
    """A setting read from the environment or ``.env`` has a value that cannot be used."""


def _all_optional(model: type[BaseModel], name: str, doc: str) -> type[BaseModel]:
    """A model with ``model``'s fields and bounds, each optional with default ``None``."""
    fields: dict[str, Any] = {
        field: (info.annotation | None, FieldInfo.merge_field_infos(info, default=None))
        for field, info in model.model_fields.items()
    }
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **fields)


#: Per-service values replacing the defaults; unset fields keep the defaults.
CircuitBreakerOverrides = _all_optional(
    CircuitBreakerFields,
    "CircuitBreakerOverrides",
    "Per-service values replacing the defaults; unset fields keep the defaults.",
)


class CircuitBreakerSettings(BaseSettings, CircuitBreakerFields):
    """Circuit breaker defaults (``CIRCUIT_BREAKER_*``) and per-service overrides.

    The fields, defaults and bounds of :class:`CircuitBreakerConfig` (inherited from
    :class:`CircuitBreakerFields`), parsed leniently because environment values are strings.
    A service's overrides are read from ``CIRCUIT_BREAKER_SLSKD_API__TIMEOUT=30`` or
    ``CIRCUIT_BREAKER_SLSKD_API='{"timeout": 30}'``.
    Seconds are floats; ``max_timeout`` accepts ``none``.
    """

    model_config = SettingsConfigDict(
        env_prefix=CIRCUIT_BREAKER_ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        env_ignore_empty=True,
        env_parse_none_str="none",
        extra="ignore",
    )

    slskd_api: CircuitBreakerOverrides = Field(default_factory=CircuitBreakerOverrides)
    spotify_api: CircuitBreakerOverrides = Field(default_factory=CircuitBreakerOverrides)
    musicbrainz_api: CircuitBreakerOverrides = Field(default_factory=CircuitBreakerOverrides)

    def config_for(self, service: str) -> CircuitBreakerConfig:
        """The breaker config of ``service`` (``"slskd-api"``): its overrides on the defaults.

        An unknown service gets the defaults. Raises :class:`ConfigurationError` when the merged
        values contradict each other (``max_timeout`` below ``timeout``).
        """
        values = self.model_dump(exclude=set(SERVICES.values()))
        field = SERVICES.get(service)
        if field is not None:
            overrides: CircuitBreakerOverrides = getattr(self, field)
            values.update(overrides.model_dump(exclude_unset=True, exclude_none=True))
        return CircuitBreakerConfig(**values)


def _env_config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix, env_file=".env", env_ignore_empty=True, extra="ignore"
    )


class SlskdSettings(BaseSettings):
    """The slskd daemon's REST API (``SLSKD_*``)."""

    model_config = _env_config("SLSKD_")

    url: str = "http://127.0.0.1:5030"
    api_key: SecretStr = SecretStr("")
    #: Seconds to wait for one HTTP request.
    timeout: float = Field(10.0, gt=0)
    #: Seconds slskd searches the Soulseek network for one query.
    search_timeout: float = Field(15.0, gt=0)
    #: Seconds between two looks at a running search (the job re-enqueues itself meanwhile).
    search_poll_interval: float = Field(1.0, gt=0)
    #: Seconds between two looks at a download in progress.
    download_poll_interval: float = Field(2.0, gt=0)
    #: Candidates tried, best first, before a track's download is recorded as failed.
    max_candidates: int = Field(3, gt=0)


class MusicBrainzSettings(BaseSettings):
    """The MusicBrainz web service (``MUSICBRAINZ_*``)."""

    model_config = _env_config("MUSICBRAINZ_")

    url: str = "https://musicbrainz.org"
    app_name: str = Field("soulspot-jobs", min_length=1)
    app_version: str = Field("0.1.0", min_length=1)
    #: How MusicBrainz can reach whoever runs this instance (a URL or an e-mail address).
    contact: str = Field("soulspot-jobs@localhost", min_length=1)
    timeout: float = Field(10.0, gt=0)
    #: Seconds between two requests, across all workers (MusicBrainz allows 1 per second).
    min_interval: float = Field(1.0, gt=0)

    @property
    def user_agent(self) -> str:
        """``app/version ( contact )``, as MusicBrainz asks every client to send."""
        return f"{self.app_name}/{self.app_version} ( {self.contact} )"


class SpotifySettings(BaseSettings):
    """The Spotify Web API (``SPOTIFY_*``): the app's client credentials, and optionally a user's
    refresh token for playlists an app token may not read."""

    model_config = _env_config("SPOTIFY_")

    api_url: str = "https://api.spotify.com"
    accounts_url: str = "https://accounts.spotify.com"
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    #: A user's refresh token (authorization-code flow); when set, the client acts as that user.
    refresh_token: SecretStr = SecretStr("")
    timeout: float = Field(10.0, gt=0)


class ObservabilitySettings(BaseModel):
    """Settings of the cross-cutting concerns; for now the circuit breakers."""

    circuit_breaker: CircuitBreakerSettings = Field(default_factory=CircuitBreakerSettings)


class Settings(BaseSettings):
    """Everything soulspot-jobs reads from the environment (and ``.env`` in the cwd)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", populate_by_name=True
    )

    #: Redis holding the breakers' state and Dramatiq's queues; ``None`` starts an embedded one.
    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    #: Prefix of every Redis key soulspot-jobs writes.
    key_prefix: str = Field("soulspot", min_length=1, validation_alias="SOULSPOT_KEY_PREFIX")
    #: Seconds a finished (done or failed) job's record is kept before Redis expires it.
    job_ttl: float = Field(7 * 24 * 3600.0, gt=0, validation_alias="SOULSPOT_JOB_TTL")
    log_level: LogLevel = "INFO"
    #: ``auto`` renders for a console when stderr is a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "console"] = "auto"
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    slskd: SlskdSettings = Field(default_factory=SlskdSettings)
    musicbrainz: MusicBrainzSettings = Field(default_factory=MusicBrainzSettings)
    spotify: SpotifySettings = Field(default_factory=SpotifySettings)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_name_in_upper_case(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().upper()
            return "WARNING" if value == "WARN" else value
        return value

    @property
    def redis_url_redacted(self) -> str | None:
        """``redis_url`` with its password replaced by ``***``, fit for logs and output."""
        return redact_url(self.redis_url) if self.redis_url is not None else None


#: Environment variable of each top-level field whose name is not simply its upper-case name.
_ENV_ALIASES = {
    "redis_url": "REDIS_URL",
    "key_prefix": "SOULSPOT_KEY_PREFIX",
    "job_ttl": "SOULSPOT_JOB_TTL",
}


#: Settings groups read from their own environment prefix, by model name.
_GROUPS: dict[str, type[BaseSettings]] = {
    group.__name__: group
    for group in (CircuitBreakerSettings, SlskdSettings, MusicBrainzSettings, SpotifySettings)
}
#: Where each group sits in :class:`Settings`.
_GROUP_PATHS = {
    ("observability", "circuit_breaker"): CircuitBreakerSettings,
    ("slskd",): SlskdSettings,
    ("musicbrainz",): MusicBrainzSettings,
    ("spotify",): SpotifySettings,
}


def _env_var(model: str, loc: tuple[str | int, ...]) -> str:
    """Environment variable behind the field at ``loc`` of the model named ``model``."""
    parts = [str(part) for part in loc]
    group = _GROUPS.get(model)
    if model == Settings.__name__:
        for path, path_group in _GROUP_PATHS.items():
            if tuple(parts[: len(path)]) == path:
                group, parts = path_group, parts[len(path) :]
                break
        else:
            if not parts:
                return "(settings)"
            return _ENV_ALIASES.get(parts[0], parts[0].upper())
    prefix = group.model_config.get("env_prefix", "") if group else ""
    return prefix + "__".join(part.upper() for part in parts)


def _describe(exc: ValidationError) -> str:
    """One line: ``invalid setting CIRCUIT_BREAKER_TIMEOUT='x': Input should be ...``."""
    problems = [
        f"{_env_var(exc.title, error['loc'])}={error.get('input')!r}: {error['msg']}"
        for error in exc.errors()
    ]
    return "invalid setting " + "; ".join(problems)


def _describe_source_error(exc: _SourceError) -> str:
    """One line for a value that could not even be parsed (bad JSON in a nested setting)."""
    match = re.search(r'field "(\w+)"', str(exc))
    field = match.group(1) if match else ""
    if field in CircuitBreakerSettings.model_fields:
        name = CIRCUIT_BREAKER_ENV_PREFIX + field.upper()
    else:
        name = _ENV_ALIASES.get(field, field.upper())
    value = os.environ.get(name)
    shown = f"{name}={value!r}" if value is not None else name
    return f"invalid setting {shown}: {exc.__cause__ or exc}".replace("\n", " ")


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings` from ``overrides``, the environment and ``.env``, and check it.

    Every invalid value, including those of the circuit breaker settings and of per-service
    overrides, becomes one :class:`SettingsError` whose one-line message names the environment
    variable and its value.
    """
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    except _SourceError as exc:
        raise SettingsError(_describe_source_error(exc)) from None
    breakers = settings.observability.circuit_breaker
    for service in ("", *SERVICES):
        try:
            breakers.config_for(service)
        except ConfigurationError as exc:
            scope = f" of {service}" if service else ""
            raise SettingsError(f"invalid circuit breaker settings{scope}: {exc}") from None
    return settings
