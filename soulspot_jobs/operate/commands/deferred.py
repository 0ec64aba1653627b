"""``soulspot-jobs deferred [--service NAME]``: messages waiting for a breaker, and counts."""

from __future__ import annotations

import time

import typer

from soulspot_jobs.operate.commands.common import (
    JSON_OPTION,
    connected,
    print_json,
    print_table,
    service_name,
    utc,
)


def deferred(
    service: str | None = typer.Option(None, help="Only this service's (slskd, slskd-api...)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Deferred messages: id, actor, service, deferrals, first deferred, runs again in.

    Ends with how many messages each service holds back.
    """
    name = service_name(service) if service is not None else None
    with connected() as jobs:
        index = jobs.deferred
        found = index.jobs(name)
        counts = index.counts()
    if name is not None:
        counts = {name: counts.get(name, 0)}
    now_ms = time.time() * 1000
    if as_json:
        entries = [
            {
                "message_id": job.message_id,
                "actor": job.actor,
                "queue": job.queue,
                "service": job.service,
                "deferrals": job.deferrals,
                "first_deferred_at": job.first_deferred_at,
                "eta": job.eta,
                "runs_again_in": round(max(job.eta - now_ms, 0) / 1000, 3),
                "reason": job.reason,
            }
            for job in found
        ]
        print_json({"jobs": entries, "counts": counts})
        return
    rows = [
        [
            job.message_id,
            job.actor,
            job.service,
            job.deferrals,
            utc(job.first_deferred_at / 1000),
            f"{max(job.eta - now_ms, 0) / 1000:.1f}s",
        ]
        for job in found
    ]
    headers = ["message_id", "actor", "service", "deferrals", "first_deferred", "runs_again_in"]
    print_table(headers, rows)
    totals = ", ".join(f"{svc}: {n}" for svc, n in sorted(counts.items())) or "none"
    typer.echo(f"deferred per service: {totals}")
