"""What ``soulspot-jobs settings`` prints: the effective settings, secrets hidden.

The text form lists, as ``VARIABLE=value`` lines, first what was set in the environment or
``.env``, then the defaults in force, then the variables left empty (API keys, client id).
Per-service breaker overrides appear only when set. The JSON form is the whole
:class:`~soulspot_jobs.settings.Settings` as a document, plus each service's effective breaker
config. In both, API keys and client secrets are ``**********`` and passwords inside URLs
``***``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings

from soulspot_jobs.settings import HIDDEN, SERVICES, Settings
from soulspot_jobs.urls import redact_url

#: Shown for ``REDIS_URL`` when it is unset.
EMBEDDED_REDIS = "unset: an embedded redis-server is used"


@dataclass(frozen=True)
class Entry:
    """One setting: its environment variable, its value as shown, whether the user set it."""

    variable: str
    value: Any
    is_set: bool


def _shown(value: Any) -> Any:
    """``value`` fit for output: secrets hidden, URL passwords masked, ``None`` as ``none``."""
    if isinstance(value, SecretStr):
        return HIDDEN if value.get_secret_value() else ""
    if isinstance(value, str):
        return redact_url(value)
    if value is None:
        return "none"
    return value


def _entries(model: BaseModel, prefix: str, *, overrides: bool = False) -> Iterator[Entry]:
    """Every leaf setting of ``model``, its variable named from ``prefix``.

    A nested :class:`BaseSettings` group reads its own prefix; a plain nested model (a
    service's overrides) extends the prefix with ``NAME__``. Unset overrides (``None``) are
    skipped: they are not values, only the absence of one.
    """
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseSettings):
            yield from _entries(value, value.model_config.get("env_prefix", ""))
        elif isinstance(value, BaseModel):
            nested = f"{prefix}{name.upper()}__" if prefix else ""
            yield from _entries(value, nested, overrides=bool(prefix))
        elif not (overrides and value is None):
            alias = info.validation_alias
            variable = alias if isinstance(alias, str) else prefix + name.upper()
            yield Entry(variable, value, name in model.model_fields_set)


def settings_lines(settings: Settings) -> list[str]:
    """The text form: set values, then defaults, then the variables left empty."""
    entries = list(_entries(settings, ""))
    given = [e for e in entries if e.is_set]
    defaults = [e for e in entries if not e.is_set and _shown(e.value) != ""]
    empty = [e.variable for e in entries if not e.is_set and _shown(e.value) == ""]
    lines = ["# Set in the environment or .env"]
    lines += [f"{e.variable}={_shown(e.value)}" for e in given] or ["# (nothing)"]
    lines.append("# Defaults")
    for entry in defaults:
        if entry.variable == "REDIS_URL" and entry.value is None:
            lines.append(f"# REDIS_URL {EMBEDDED_REDIS}")
        else:
            lines.append(f"{entry.variable}={_shown(entry.value)}")
    if empty:
        lines.append("# Empty: " + ", ".join(empty))
    return lines


def settings_document(settings: Settings) -> dict[str, Any]:
    """The JSON form: every setting, nested as in :class:`Settings`, secrets hidden.

    ``circuit_breakers`` adds each service's effective breaker config (its overrides merged on
    the defaults), which is what the workers use, and ``slskd-peer``: that of every slskd
    peer's breaker (``CIRCUIT_BREAKER_SLSKD_PEER__*`` on the peer defaults).
    """
    document = settings.model_dump(mode="json")
    breakers = settings.observability.circuit_breaker
    document["circuit_breakers"] = {
        service: breakers.config_for(service).model_dump(mode="json") for service in SERVICES
    }
    document["circuit_breakers"]["slskd-peer"] = breakers.peer_config().model_dump(mode="json")
    return json.loads(redact_url(json.dumps(document)))
