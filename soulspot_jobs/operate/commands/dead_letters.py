"""``soulspot-jobs dead-letters`` (with the reason), ``dead-letters requeue ID|--all`` and
``dead-letters delete ID|--all``."""

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

#: Exit status of ``requeue --all`` when dead letters were there but none could be requeued
#: (every one malformed).
EXIT_NOTHING_REQUEUED = 1

app = typer.Typer(help="List dead-lettered messages, put them back on their queues, delete them.")


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
    all_: bool = typer.Option(
        False, "--all", help="Requeue every dead-lettered message but the malformed ones."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Put dead-lettered messages back on their queue as fresh messages (retries start at 0).

    The job record of a requeued job goes back to queued, with the requeue in its history.
    --all leaves malformed ones (undecodable, or naming no job record, or with wrong arguments:
    they would come straight back) where they are, one `skipped ID: malformed (why)` line each;
    it exits 1 when there were dead letters and none could be requeued.
    """
    if all_ == (message_id is not None):
        fail("dead-letters requeue needs a message id or --all (not both)")
    skipped = []
    with connected() as jobs:
        letters = jobs.dead_letters()
        if all_:
            outcome = letters.requeue_all()
            done, skipped = outcome.requeued, outcome.skipped
        else:
            try:
                done = [letters.requeue(message_id or "")]
            except DeadLetterNotFound as exc:
                fail(str(exc), EXIT_NOT_FOUND)
    if as_json:
        print_json(
            {
                "requeued": [letter.message_id for letter in done],
                "skipped": [
                    {"message_id": letter.message_id, "reason": letter.reason} for letter in skipped
                ],
            }
        )
    else:
        for letter in done:
            typer.echo(f"requeued {letter.message_id} ({letter.actor}) on {letter.queue}")
        for letter in skipped:
            typer.echo(f"skipped {letter.message_id}: malformed ({letter.why_malformed})")
        typer.echo(f"{len(done)} message(s) requeued")
    if skipped and not done:
        raise typer.Exit(EXIT_NOTHING_REQUEUED)


@app.command()
def delete(
    message_id: str | None = typer.Argument(None, help="The dead-lettered message's id."),
    all_: bool = typer.Option(False, "--all", help="Delete every dead-lettered message."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete dead-lettered messages for good, with their recorded reason.

    The job of a deleted message stays failed (one that was not finished becomes failed:
    nothing is left to run it), with the deletion in its history.
    """
    if all_ == (message_id is not None):
        fail("dead-letters delete needs a message id or --all (not both)")
    with connected() as jobs:
        letters = jobs.dead_letters()
        try:
            done = letters.delete_all() if all_ else [letters.delete(message_id or "")]
        except DeadLetterNotFound as exc:
            fail(str(exc), EXIT_NOT_FOUND)
    if as_json:
        print_json({"deleted": [letter.message_id for letter in done]})
        return
    for letter in done:
        typer.echo(f"deleted {letter.message_id} ({letter.actor}) from {letter.queue}")
    typer.echo(f"{len(done)} message(s) deleted")
