"""Settings read from the environment and from ``.env``, validated once by :func:`load_settings`.

Nothing here is read at import time: build a :class:`Settings` (through :func:`load_settings`)
where the program starts and pass it on explicitly.

URL settings are checked here (an upstream URL must be ``http(s)://`` with a host, ``REDIS_URL``
one redis-py can connect by) and held as :class:`~soulspot_jobs.urls.RedactedUrl`: the clients
get the real URL, while ``repr(settings)``, ``model_dump(mode="json")`` and every error message
show ``***`` in place of a password. API keys, client secrets and refresh tokens are
``SecretStr``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import dotenv_values
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig, CircuitBreakerFields
from soulspot_jobs.circuit_breaker.peers import peer_config
from soulspot_jobs.errors import ConfigurationError
from soulspot_jobs.urls import (
    check_http_url,
    check_redis_url,
    redact_invalid_url,
    redact_url,
    url_passwords,
)

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
#: Fewest characters of ``SOULSPOT_ADMIN_TOKEN``: it guards every action of the web page.
MIN_ADMIN_TOKEN_LENGTH = 16
#: The file read beside the environment, relative to the working directory.
ENV_FILE = ".env"
#: How a secret's value is shown in output and error messages.
HIDDEN = "**********"

#: An upstream API's base URL: ``http(s)://`` with a host; its password hidden when shown.
HttpUrl = Annotated[
    str,
    AfterValidator(check_http_url),
    PlainSerializer(redact_url, return_type=str, when_used="json"),
]
#: A Redis URL redis-py can connect by; its password hidden when shown.
RedisUrl = Annotated[
    str,
    AfterValidator(check_redis_url),
    PlainSerializer(redact_url, return_type=str, when_used="json"),
]
#: A HALF_OPEN trial is one message run; the most HTTP calls one job step makes (``search_track``:
#: look at the search, read its responses, enqueue the download) ...
TRIAL_LEASE_CALLS = 3
#: ... each bounded by the service's HTTP timeout, plus this many seconds of margin.
TRIAL_LEASE_MARGIN = 5.0


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
    Seconds are floats; ``max_timeout`` accepts ``none``. ``trial_lease`` unset (the default)
    is derived per service from its HTTP timeout: ``TRIAL_LEASE_CALLS`` × timeout +
    ``TRIAL_LEASE_MARGIN`` (35 s with the 10 s default), so a dead trial holder wedges HALF_OPEN
    no longer than a live trial could last.
    """

    model_config = SettingsConfigDict(
        env_prefix=CIRCUIT_BREAKER_ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=ENV_FILE,
        hide_input_in_errors=True,
        env_ignore_empty=True,
        env_parse_none_str="none",
        extra="ignore",
    )

    slskd_api: CircuitBreakerOverrides = Field(default_factory=CircuitBreakerOverrides)
    spotify_api: CircuitBreakerOverrides = Field(default_factory=CircuitBreakerOverrides)
    musicbrainz_api: CircuitBreakerOverrides = Field(default_factory=CircuitBreakerOverrides)
    #: Seconds a trial slot stays taken if its caller never reports; ``None``: derived.
    trial_lease: float | None = Field(None, gt=0)
    #: HTTP timeout of each service's client (seconds), set by :class:`Settings`.
    _client_timeouts: dict[str, float] = PrivateAttr(default_factory=dict)

    # -- Soulseek's per-peer breakers (``CIRCUIT_BREAKER_SLSKD_PEER__*``) -------------------
    #: Overrides of the peer breakers' own defaults
    #: (:data:`~soulspot_jobs.circuit_breaker.peers.PEER_DEFAULTS`), not of the services'
    #: defaults above; left out of :meth:`config_for` (see :meth:`peer_config`).
    slskd_peer: CircuitBreakerOverrides = Field(
        default_factory=CircuitBreakerOverrides, exclude=True
    )

    @field_validator("slskd_peer")
    @classmethod
    def _peer_config_is_consistent(cls, value: BaseModel) -> BaseModel:
        try:
            peer_config(**value.model_dump(exclude_none=True))
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return value

    def peer_config(self) -> CircuitBreakerConfig:
        """The config of every slskd peer's breaker: the peer defaults with the
        ``CIRCUIT_BREAKER_SLSKD_PEER__*`` overrides."""
        return peer_config(**self.slskd_peer.model_dump(exclude_none=True))

    def config_for(self, service: str) -> CircuitBreakerConfig:
        """The breaker config of ``service`` (``"slskd-api"``): its overrides on the defaults.

        An unknown service gets the defaults. Raises :class:`ConfigurationError` when the merged
        values contradict each other (``max_timeout`` below ``timeout``).
        """
        values = self.model_dump(exclude=set(SERVICES.values()), exclude_none=True)
        field = SERVICES.get(service)
        if field is not None:
            overrides: CircuitBreakerOverrides = getattr(self, field)
            values.update(overrides.model_dump(exclude_unset=True, exclude_none=True))
        client_timeout = self._client_timeouts.get(service)
        if "trial_lease" not in values and client_timeout is not None:
            values["trial_lease"] = TRIAL_LEASE_CALLS * client_timeout + TRIAL_LEASE_MARGIN
        return CircuitBreakerConfig(**values)


def _env_config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix,
        env_file=ENV_FILE,
        env_ignore_empty=True,
        extra="ignore",
        hide_input_in_errors=True,
    )


class SlskdSettings(BaseSettings):
    """The slskd daemon's REST API (``SLSKD_*``)."""

    model_config = _env_config("SLSKD_")

    url: HttpUrl = "http://127.0.0.1:5030"
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
    #: Seconds a download may wait in the peer's queue (``Queued, Remotely``) before it is
    #: cancelled and the next candidate is tried.
    remote_queue_timeout: float = Field(3600.0, gt=0)
    # -- Soulseek's per-peer breakers (``SLSKD_PEER_*``) ------------------------------------
    #: Percent of a search's peers that may be skipped because their breaker ejected them;
    #: the other ejected peers are tried after the healthy ones (one is always left).
    peer_max_ejection_percent: float = Field(50.0, ge=0, le=100)
    #: Seconds after its last write that a peer's breaker is forgotten (its key expires).
    peer_idle_expiry: float = Field(24 * 3600.0, gt=0)


class MusicBrainzSettings(BaseSettings):
    """The MusicBrainz web service (``MUSICBRAINZ_*``)."""

    model_config = _env_config("MUSICBRAINZ_")

    url: HttpUrl = "https://musicbrainz.org"
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

    api_url: HttpUrl = "https://api.spotify.com"
    accounts_url: HttpUrl = "https://accounts.spotify.com"
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    #: A user's refresh token (authorization-code flow); when set, the client acts as that user.
    refresh_token: SecretStr = SecretStr("")
    timeout: float = Field(10.0, gt=0)


class RecoverySettings(BaseSettings):
    """How workers bring back the work of a dead worker or of a Redis restart (``RECOVERY_*``).

    See ``docs/crash-recovery.md``: every worker process heartbeats every ``interval``; one
    silent for ``heartbeat_timeout`` is dead and its unacknowledged messages are requeued. A job
    record in a non-final state with no message anywhere for ``orphan_after`` is requeued at
    its current step (at most ``orphan_requeues`` times, then marked ``failed``).
    """

    model_config = _env_config("RECOVERY_")

    #: Seconds between two heartbeats (and looks for dead workers) of each worker process.
    interval: float = Field(1.0, gt=0)
    #: Seconds without a heartbeat after which a worker process counts as dead.
    heartbeat_timeout: float = Field(15.0, gt=0)
    #: Seconds a non-final job may have no message anywhere before it is requeued or failed.
    orphan_after: float = Field(20.0, gt=0)
    #: Seconds between two looks for such jobs (one worker process looks at a time).
    orphan_check_interval: float = Field(5.0, gt=0)
    #: Times a job whose messages vanished is requeued before it is marked failed.
    orphan_requeues: int = Field(3, ge=0)


class ObservabilitySettings(BaseModel):
    """Settings of the cross-cutting concerns; for now the circuit breakers."""

    circuit_breaker: CircuitBreakerSettings = Field(default_factory=CircuitBreakerSettings)


class Settings(BaseSettings):
    """Everything soulspot-jobs reads from the environment (and ``.env`` in the cwd)."""

    model_config = SettingsConfigDict(
        env_file=ENV_FILE,
        env_ignore_empty=True,
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    #: Redis holding the breakers' state and Dramatiq's queues; ``None`` starts an embedded one.
    redis_url: RedisUrl | None = Field(None, validation_alias="REDIS_URL")
    #: Where Dramatiq's messages go: ``amqp://`` (RabbitMQ) or ``redis://``; ``None``: REDIS_URL.
    broker_url: str | None = Field(None, validation_alias="BROKER_URL")
    #: Prefix of every Redis key soulspot-jobs writes.
    key_prefix: str = Field("soulspot", min_length=1, validation_alias="SOULSPOT_KEY_PREFIX")
    #: Seconds a finished (done or failed) job's record is kept before Redis expires it.
    job_ttl: float = Field(7 * 24 * 3600.0, gt=0, validation_alias="SOULSPOT_JOB_TTL")
    #: Where the embedded Redis (used while ``REDIS_URL`` is unset) keeps its socket and data.
    data_dir: Path = Field(Path(".soulspot"), validation_alias="SOULSPOT_DATA_DIR")
    #: Seconds a worker waits at start for its Redis (and RabbitMQ) to answer; ``inf``: until
    #: they do; ``0``: exit at once when one does not answer.
    startup_wait: float = Field(float("inf"), ge=0, validation_alias="SOULSPOT_STARTUP_WAIT")
    #: What an operator presents to the web page to reset or open breakers, requeue, delete
    #: and cancel; unset (or empty): the page is read-only and refuses every action.
    admin_token: SecretStr = Field(SecretStr(""), validation_alias="SOULSPOT_ADMIN_TOKEN")
    log_level: LogLevel = "INFO"
    #: ``auto`` renders for a console when stderr is a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "console"] = "auto"
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    slskd: SlskdSettings = Field(default_factory=SlskdSettings)
    musicbrainz: MusicBrainzSettings = Field(default_factory=MusicBrainzSettings)
    spotify: SpotifySettings = Field(default_factory=SpotifySettings)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_name_in_upper_case(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().upper()
            return "WARNING" if value == "WARN" else value
        return value

    @field_validator("admin_token")
    @classmethod
    def _admin_token_hard_to_guess(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if token and len(token) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"must be at least {MIN_ADMIN_TOKEN_LENGTH} characters (it is {len(token)}); "
                "for example: python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        return value

    @model_validator(mode="after")
    def _breakers_know_client_timeouts(self) -> Settings:
        """Each service's breaker derives its default ``trial_lease`` from its HTTP timeout."""
        self.observability.circuit_breaker._client_timeouts = {
            "slskd-api": self.slskd.timeout,
            "musicbrainz-api": self.musicbrainz.timeout,
            "spotify-api": self.spotify.timeout,
        }
        return self

    @property
    def redis_url_redacted(self) -> str | None:
        """``redis_url`` with its password replaced by ``***``, fit for logs and output."""
        return redact_url(self.redis_url) if self.redis_url is not None else None

    def secret_values(self) -> list[str]:
        """Every secret these settings hold: API keys, client secrets, refresh tokens, passwords
        inside URLs.

        The logging setup masks each of them wherever it would appear in a line. A URL's
        password is given both as written (percent-encoded) and decoded.
        """
        secrets = [
            self.slskd.api_key.get_secret_value(),
            self.spotify.client_secret.get_secret_value(),
            self.spotify.refresh_token.get_secret_value(),
            self.admin_token.get_secret_value(),
        ]
        for url in self.urls().values():
            secrets.extend(url_passwords(url) if url else ())
        return [secret for secret in dict.fromkeys(secrets) if secret]

    def urls(self) -> dict[str, str | None]:
        """Every URL setting by environment variable (``REDIS_URL`` is ``None`` when unset)."""
        return {
            "REDIS_URL": self.redis_url,
            "SLSKD_URL": self.slskd.url,
            "MUSICBRAINZ_URL": self.musicbrainz.url,
            "SPOTIFY_API_URL": self.spotify.api_url,
            "SPOTIFY_ACCOUNTS_URL": self.spotify.accounts_url,
        }


#: Environment variable of each top-level field whose name is not simply its upper-case name.
_ENV_ALIASES = {
    "redis_url": "REDIS_URL",
    "broker_url": "BROKER_URL",
    "key_prefix": "SOULSPOT_KEY_PREFIX",
    "job_ttl": "SOULSPOT_JOB_TTL",
    "data_dir": "SOULSPOT_DATA_DIR",
    "admin_token": "SOULSPOT_ADMIN_TOKEN",
    "startup_wait": "SOULSPOT_STARTUP_WAIT",
}


#: Settings groups read from their own environment prefix, by model name.
_GROUPS: dict[str, type[BaseSettings]] = {
    group.__name__: group
    for group in (
        CircuitBreakerSettings,
        SlskdSettings,
        MusicBrainzSettings,
        SpotifySettings,
        RecoverySettings,
    )
}
#: Where each group sits in :class:`Settings`.
_GROUP_PATHS = {
    ("observability", "circuit_breaker"): CircuitBreakerSettings,
    ("slskd",): SlskdSettings,
    ("musicbrainz",): MusicBrainzSettings,
    ("spotify",): SpotifySettings,
    ("recovery",): RecoverySettings,
}


#: Names of variables whose value is never shown, not even in an error message.
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)


def _environment() -> dict[str, str]:
    """The variables settings are read from, by upper-case name: ``.env``, then the environment.

    Names are matched case-insensitively, as pydantic-settings reads them.
    """
    values: dict[str, str] = {}
    if Path(ENV_FILE).is_file():
        values.update(
            (name.upper(), value)
            for name, value in dotenv_values(ENV_FILE).items()
            if value is not None
        )
    values.update((name.upper(), value) for name, value in os.environ.items())
    return values


def _env_candidates(model: str, loc: tuple[str | int, ...]) -> Iterator[tuple[str, list[str]]]:
    """Variables that may hold the field at ``loc`` of the model named ``model``, most exact first.

    Each comes with the fields left inside its value: ``CIRCUIT_BREAKER_SLSKD_API__TIMEOUT``
    with none, then ``CIRCUIT_BREAKER_SLSKD_API`` (a JSON object) with ``["timeout"]``.
    """
    parts = [str(part) for part in loc]
    group = _GROUPS.get(model)
    if model == Settings.__name__:
        for path, path_group in _GROUP_PATHS.items():
            if tuple(parts[: len(path)]) == path:
                group, parts = path_group, parts[len(path) :]
                break
        else:
            if not parts:
                yield "(settings)", []
                return
            parts[0] = _ENV_ALIASES.get(parts[0], parts[0])
    prefix = group.model_config.get("env_prefix", "") if group else ""
    for end in range(len(parts), 0, -1):
        yield prefix + "__".join(part.upper() for part in parts[:end]), parts[end:]


def _shown(name: str, value: Any) -> str:
    """``value`` of variable ``name`` as an error message may show it: secrets hidden."""
    if _SECRET_NAME.search(name):
        return repr(HIDDEN)
    if isinstance(value, str):
        return repr(redact_invalid_url(value))
    return repr(value)


def _problem(model: str, error: Any, environment: dict[str, str]) -> str:
    """``NAME='value': reason`` for one validation error, naming the variable the user set."""
    candidates = list(_env_candidates(model, error["loc"]))
    name, inner = candidates[0]
    value = error.get("input")
    for candidate, fields in candidates:
        if candidate in environment:
            name, inner, value = candidate, fields, environment[candidate]
            break
    else:
        inner = []
    where = f" (field {'.'.join(inner)})" if inner else ""
    reason = error["msg"]
    if error["type"] == "value_error":  # our own checks: their message without pydantic's prefix
        reason = str(error["ctx"]["error"])
    return f"{name}={_shown(name, value)}{where}: {reason}"


def _describe(exc: ValidationError) -> str:
    """One line: ``invalid setting CIRCUIT_BREAKER_TIMEOUT='x': Input should be ...``."""
    environment = _environment()
    problems = [_problem(exc.title, error, environment) for error in exc.errors()]
    return "invalid setting " + "; ".join(problems)


def _describe_source_error(exc: _SourceError) -> str:
    """One line for a value that could not even be parsed (bad JSON in a nested setting)."""
    match = re.search(r'field "(\w+)"', str(exc))
    field = match.group(1) if match else ""
    if field in CircuitBreakerSettings.model_fields:
        name = CIRCUIT_BREAKER_ENV_PREFIX + field.upper()
    else:
        name = _ENV_ALIASES.get(field, field.upper())
    value = _environment().get(name)
    shown = f"{name}={_shown(name, value)}" if value is not None else name
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
