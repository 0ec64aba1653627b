"""The start-up check: does each configured service take our credentials?

A wrong ``SLSKD_API_KEY`` or ``SPOTIFY_CLIENT_SECRET`` fails every job of that service, and no
job can tell it from an outage. So ``soulspot-jobs worker`` asks each configured service once,
as the workers start, and logs one line per service:

* slskd (``SLSKD_API_KEY`` set): ``GET /api/v0/session`` takes the key, and ``GET
  /api/v0/server`` says slskd is logged in to Soulseek;
* Spotify (``SPOTIFY_CLIENT_ID`` set): a token is obtained with the client credentials, or with
  ``SPOTIFY_REFRESH_TOKEN`` when it is set;
* MusicBrainz needs no credentials: the line says which User-Agent is sent.

A refusal (:class:`~soulspot_jobs.errors.UnauthorizedError`) or an outage
(:class:`~soulspot_jobs.errors.ServiceOutage`: slskd logged out) is recorded on the service's
breaker, which opens with the reason, so its jobs are deferred from the first one on and
``status`` says why. A service that cannot be reached is only logged: the breaker judges
outages from the jobs' own calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from soulspot_jobs.circuit_breaker import CircuitBreakerError
from soulspot_jobs.errors import ServiceOutage, UpstreamError
from soulspot_jobs.jobs.runtime import Runtime
from soulspot_jobs.settings import Settings

log = structlog.get_logger("soulspot_jobs.credentials")


@dataclass(frozen=True)
class CheckResult:
    """What the check of one service found: ``ok``, and the line logged."""

    service: str
    ok: bool
    line: str


def check_credentials(runtime: Runtime) -> list[CheckResult]:
    """Check each configured service (see the module docstring); log and return one result
    per service."""
    settings = runtime.settings
    checks: list[tuple[str, Callable[[], str]]] = []
    if settings.slskd.api_key.get_secret_value():
        checks.append(("slskd-api", lambda: _slskd(runtime)))
    if settings.spotify.client_id:
        checks.append(("spotify-api", lambda: _spotify(runtime)))
    checks.append(("musicbrainz-api", lambda: _musicbrainz(runtime)))
    return [_checked(runtime, service, check) for service, check in checks]


def start_credential_check(settings: Settings, redis_url: str) -> threading.Thread:
    """Run :func:`check_credentials` in a daemon thread of this process, on the deployment's
    own breakers (``redis_url``), so the workers start without waiting for it."""

    def run() -> None:
        from soulspot_jobs.jobs.app import SoulspotJobs

        try:
            jobs = SoulspotJobs(settings.model_copy(update={"redis_url": redis_url}))
        except Exception as exc:  # noqa: BLE001 - a check that cannot start only says so
            log.warning(f"Credentials not checked: {exc}", event_name="credentials.not_checked")
            return
        try:
            check_credentials(jobs.runtime)
        finally:
            jobs.close()

    thread = threading.Thread(target=run, name="credential-check", daemon=True)
    thread.start()
    return thread


def _slskd(runtime: Runtime) -> str:
    server = runtime.slskd.client.check_session()
    return f"SLSKD_API_KEY accepted; slskd is logged in to Soulseek ({server or 'its server'})"


def _spotify(runtime: Runtime) -> str:
    grant = runtime.spotify.client.check_credentials()
    if grant == "user":
        return "SPOTIFY_REFRESH_TOKEN accepted: jobs act as that user"
    return "SPOTIFY_CLIENT_ID/SPOTIFY_CLIENT_SECRET accepted (an app token)"


def _musicbrainz(runtime: Runtime) -> str:
    agent = runtime.settings.musicbrainz.user_agent
    return f"no credentials needed; requests carry the User-Agent {agent!r}"


def _checked(runtime: Runtime, service: str, check: Callable[[], str]) -> CheckResult:
    try:
        said = check()
    except ServiceOutage as exc:
        _record(runtime, service, exc)
        line = f"{service}: {exc.outage}: {_words(exc)}; its jobs are deferred until it is fixed"
        log.error(line, event_name="credentials.refused", service=service, reason=exc.outage)
        return CheckResult(service, False, line)
    except (UpstreamError, OSError) as exc:
        line = f"{service}: credentials not checked: {_words(exc)}"
        log.warning(line, event_name="credentials.unchecked", service=service)
        return CheckResult(service, False, line)
    line = f"{service}: {said}"
    log.info(line, event_name="credentials.accepted", service=service)
    return CheckResult(service, True, line)


def _record(runtime: Runtime, service: str, exc: ServiceOutage) -> None:
    """Count ``exc`` on the service's breaker, which opens at once with its reason."""
    breaker = runtime.breakers[service]
    try:
        permit = breaker.acquire_sync()
    except CircuitBreakerError:
        return  # already OPEN
    breaker.record_outcome_sync(permit, exc)


def _words(exc: BaseException) -> str:
    return exc.detail if isinstance(exc, UpstreamError) else str(exc)
