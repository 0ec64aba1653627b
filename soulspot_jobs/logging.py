"""The one place structlog and the standard library's logging are configured.

Both structlog loggers and stdlib loggers (Dramatiq's, redis-py's) go through the same processor
chain and the same root handler on stderr, so every line has the same shape: JSON objects with
``level``, ``message`` and ``timestamp`` in production, coloured console lines on a terminal.
Secrets are redacted twice: by field name and inside URLs before rendering, and once more in
the rendered line, where every secret value the settings hold (API keys, client secrets, URL
passwords) is masked wherever it appears: in an exception's traceback, in a third-party
library's message (httpx logs each request's URL), in a field of any name.

Under ``dramatiq soulspot_jobs.worker`` each worker process already has Dramatiq's own handler
(``logging.basicConfig`` on the pipe to the parent process); this handler replaces it, so each
record is written once, in this format, and never as an unredacted copy.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from soulspot_jobs.urls import PASSWORD_MASK, redact_url

if TYPE_CHECKING:
    from soulspot_jobs.settings import Settings

#: What replaces the value of a field whose name says it holds a secret.
REDACTED = "[REDACTED]"
#: Field names whose values are never logged (matched anywhere in the name, case-insensitively).
SECRET_KEY = re.compile(r"passw(?:or)?d|secret|token|api_?key|authorization", re.IGNORECASE)
#: Marks the root handler this module installed, so reconfiguring replaces it instead of adding.
_HANDLER_MARK = "_soulspot_jobs_handler"
#: Secret values shorter than this are masked by field name and URL shape only: masking every
#: occurrence of a few characters would garble lines (and break JSON).
MIN_SCRUBBED_LENGTH = 6

__all__ = [
    "REDACTED",
    "SECRET_KEY",
    "SecretScrubber",
    "configure_logging",
    "redact",
    "redact_secrets",
    "redact_url",
]


def redact(value: Any) -> Any:
    """A copy of ``value`` fit for logs: secret-named mapping keys hidden, URL passwords masked.

    Mappings, lists and tuples are walked recursively; other values are returned unchanged.
    """
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        return {
            key: REDACTED if isinstance(key, str) and SECRET_KEY.search(key) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(item) for item in value)
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor applying :func:`redact` to every field of the event."""
    return redact(event_dict)


class SecretScrubber:
    """The last processor: masks known secret values, and URL passwords, in the rendered line.

    Field-name redaction cannot see a secret inside a traceback or inside a message of another
    library; this looks at the final text instead. Values shorter than
    :data:`MIN_SCRUBBED_LENGTH` are left to the other redaction.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        unique = {s for s in secrets if s and len(s) >= MIN_SCRUBBED_LENGTH}
        #: Longest first, so a secret containing another is masked whole.
        self.secrets = sorted(unique, key=len, reverse=True)

    def __call__(self, _logger: WrappedLogger, _method: str, line: Any) -> Any:
        if not isinstance(line, str):
            return line
        for secret in self.secrets:
            line = line.replace(secret, PASSWORD_MASK)
        return redact_url(line)


def _upper_case_level(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Render ``level`` as ``WARNING`` rather than ``warning``, as the documented JSON shows."""
    level = event_dict.get("level")
    if isinstance(level, str):
        event_dict["level"] = level.upper()
    return event_dict


def _renderer_chain(log_format: str, stream: TextIO) -> list[Processor]:
    """The processors that turn an event dict into the final line for ``log_format``."""
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"
    if log_format == "console":
        # Plain tracebacks: rich's would print local variables (API keys in request headers),
        # cut long strings and wrap lines, so a secret could escape the final masking in part.
        return [
            structlog.dev.ConsoleRenderer(
                colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        ]
    return [
        _upper_case_level,
        structlog.processors.format_exc_info,
        structlog.processors.EventRenamer("message", "event_name"),
        structlog.processors.JSONRenderer(),
    ]


def _writes_to(handler: logging.Handler, stream: TextIO) -> bool:
    """Whether ``handler`` is a plain stream handler writing to ``stream``."""
    return type(handler) is logging.StreamHandler and handler.stream is stream


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to one handler on ``stream`` (default: stderr).

    Idempotent: calling it again replaces the handler it installed before. Any other plain
    ``StreamHandler`` of the root logger writing to the same stream (the one Dramatiq's worker
    command installs with ``basicConfig``) is replaced too, since it would print every record a
    second time in another format and without redaction. Other handlers (pytest's, for instance)
    are left alone. Loggers are not cached on first use, so ``structlog.testing.capture_logs``
    keeps working after this call.
    """
    stream = stream if stream is not None else sys.stderr
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_renderer_chain(settings.log_format, stream),
                SecretScrubber(settings.secret_values()),
            ],
        )
    )
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    replaced = [
        h for h in root.handlers if getattr(h, _HANDLER_MARK, False) or _writes_to(h, stream)
    ]
    for old in replaced:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
