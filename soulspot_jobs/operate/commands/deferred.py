"""``soulspot-jobs deferred [--service NAME]``: messages waiting for a breaker, and counts.

Each message is shown with its job (the job record whose deferred message it is: ``-`` for a
message that is no job's step) and the reason it was last deferred.
"""

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
    """Deferred messages: id, its job, actor, service, deferrals, first deferred, runs again
    in, and why.

    Ends with how many messages each service holds back.
    """
    name = service_name(service) if service is not None else None
    with connected() as jobs:
        index = jobs.deferred
        found = index.jobs(name)
        counts = index.counts()
        job_of = jobs.store.deferred_message_jobs() if found else {}
    if name is not None:
        counts = {name: counts.get(name, 0)}
    now_ms = time.time() * 1000
    if as_json:
        entries = [
            {
                "message_id": job.message_id,
                "job_id": job_of.get(job.message_id),
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
            job_of.get(job.message_id),
            job.actor,
            job.service,
            job.deferrals,
            utc(job.first_deferred_at / 1000),
            f"{max(job.eta - now_ms, 0) / 1000:.1f}s",
            job.reason,
        ]
        for job in found
    ]
    headers = [
        "message_id",
        "job",
        "actor",
        "service",
        "deferrals",
        "first_deferred",
        "runs_again_in",
        "reason",
    ]
    print_table(headers, rows)
    totals = ", ".join(f"{svc}: {n}" for svc, n in sorted(counts.items())) or "none"
    typer.echo(f"deferred per service: {totals}")
