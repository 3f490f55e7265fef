"""``crmqueue dlq list|replay``: the dead-letter sets."""

from __future__ import annotations

import click
from rich.table import Table

from crmqueue.cli.common import QUEUE_CHOICE, console, emit_json, group, open_broker
from crmqueue.config import QUEUE_NAMES


@group()
def dlq() -> None:
    """The dead-letter sets: list and replay."""


@dlq.command("list")
@click.argument("queue", type=QUEUE_CHOICE, required=False)
@click.option("--limit", type=click.IntRange(min=1), default=100)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def dlq_list(queue: str | None, limit: int, as_json: bool) -> None:
    """List dead jobs with their last error."""
    from crmqueue import jobs as jobs_api

    open_broker()
    dead = [
        info for name in ([queue] if queue else QUEUE_NAMES) for info in jobs_api.dead(name, limit)
    ]
    if as_json:
        emit_json([info.to_dict() for info in dead])
        return
    table = Table(title="dead jobs", caption="whole errors: crmqueue jobs show ID")
    for column in ("id", "queue", "tenant", "name", "attempts", "died", "last error"):
        table.add_column(column)
    for info in dead:
        last = info.errors[-1] if info.errors else {"type": "-", "message": ""}
        table.add_row(
            info.id, info.queue, info.tenant, info.name.rsplit(".", 1)[-1],
            f"{info.attempts}/{info.max_attempts}", info.finished_at or "-",
            _shortened(f"{last['type']}: {last['message']}", 120),
        )  # fmt: skip
    console.print(table)


def _shortened(text: str, limit: int) -> str:
    """`text`, or its first `limit` - 1 characters and an ellipsis, so a cut is visible."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dlq.command("replay")
@click.argument("job_id", required=False)
@click.option("--all", "all_queue", type=QUEUE_CHOICE, default=None, help="Replay a whole queue.")
def dlq_replay(job_id: str | None, all_queue: str | None) -> None:
    """Put one dead job, or every dead job of a queue, back to waiting."""
    from crmqueue import jobs as jobs_api

    if (job_id is None) == (all_queue is None):
        raise click.UsageError("give a JOB_ID or --all QUEUE")
    open_broker()
    ids = [jobs_api.retry(job_id).id] if job_id else jobs_api.replay_dead(all_queue or "")
    for replayed in ids:
        click.echo(replayed)
    click.echo(f"replayed {len(ids)} job(s)", err=True)


COMMANDS = (dlq,)
