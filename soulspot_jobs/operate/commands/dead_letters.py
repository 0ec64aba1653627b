"""``soulspot-jobs dead-letters`` (with the reason) and ``dead-letters requeue ID|--all``."""

from __future__ import annotations

import typer

from soulspot_jobs.deferral.dead_letters import DeadLetterNotFound
from soulspot_jobs.operate.commands.common import (
    EXIT_NOT_FOUND,
    JSON_OPTION,
    connected,
    fail,
    print_json,
    print_table,
    utc,
)

app = typer.Typer(help="List dead-lettered messages, or put them back on their queues.")

@app.callback(invoke_without_command=True)
def dead_letters(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Dead-lettered messages, oldest first: id, actor, queue, when, and why."""
    if ctx.invoked_subcommand is not None:
        return
    with connected() as jobs:
        letters = jobs.dead_letters().list()
    if as_json:
        print_json([letter.as_dict() for letter in letters])
        return
    rows = [
        [
            letter.message_id,
            letter.actor,
            letter.queue,
            utc(letter.dead_lettered_at / 1000),
            letter.reason,
        ]
        for letter in letters
    ]
    print_table(["message_id", "actor", "queue", "dead_lettered", "reason"], rows)


@app.command()
def requeue(
    message_id: str | None = typer.Argument(None, help="The dead-lettered message's id."),
    all_: bool = typer.Option(False, "--all", help="Requeue every dead-lettered message."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Put dead-lettered messages back on their queue as fresh messages (retries start at 0).

    The job record of a requeued job goes back to queued, with the requeue in its history.
    """
    if all_ == (message_id is not None):
        fail("dead-letters requeue needs a message id or --all (not both)")
    with connected() as jobs:
        letters = jobs.dead_letters()
        try:
            done = letters.requeue_all() if all_ else [letters.requeue(message_id or "")]
        except DeadLetterNotFound as exc:
            fail(str(exc), EXIT_NOT_FOUND)
    if as_json:
        print_json({"requeued": [letter.message_id for letter in done]})
        return
    for letter in done:
        typer.echo(f"requeued {letter.message_id} ({letter.actor}) on {letter.queue}")
    typer.echo(f"{len(done)} message(s) requeued")
