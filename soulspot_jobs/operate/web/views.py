"""The page's sections and the template filters that format what they show.

Each name in :data:`SECTIONS` is a template ``templates/_<name>.html`` rendered inside
``<section id="<name>">``; the live updates send a section again only when its HTML changed.
Times are rendered as ``<time>`` elements carrying epoch milliseconds, which ``static/page.js``
turns into "in 42 s" / "3 min ago" and keeps counting between updates.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from jinja2 import Environment

#: The live sections of the page, in the order they appear.
SECTIONS = ("summary", "breakers", "deferred", "dead_letters", "jobs", "workers")


def utc(epoch_ms: float | None) -> str:
    """``2026-12-05 07:12:03Z`` for epoch milliseconds; ``-`` for none or a time no clock shows."""
    if not epoch_ms or not math.isfinite(epoch_ms):
        return "-"
    try:
        moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def epoch_ms(epoch_seconds: float | None) -> int | None:
    """Epoch seconds (as job records keep them) in milliseconds."""
    if not epoch_seconds or not math.isfinite(epoch_seconds):
        return None
    return int(epoch_seconds * 1000)


def short(identifier: str | None, length: int = 8) -> str:
    """The first ``length`` characters of an id: enough to tell jobs apart on a page."""
    return (identifier or "-")[:length]


def install_filters(env: Environment) -> None:
    env.filters.update(utc=utc, epoch_ms=epoch_ms, short=short)
