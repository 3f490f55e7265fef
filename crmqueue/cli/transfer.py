"""``crmqueue import`` and ``crmqueue export``: CRM records from and to files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from crmqueue.cli.common import command, console, describe_job, open_broker

ENTITY_CHOICE = click.Choice(["contacts", "companies", "leads", "activities"])


def _wait_with_progress(job: Any, timeout: float | None) -> Any:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), console=console
    ) as bar:
        task = bar.add_task(f"job {job.id}", total=100)
        return job.wait(
            timeout,
            on_poll=lambda info: bar.update(
                task, completed=info.progress, description=f"job {job.id} {info.state}"
            ),
        )


def _finish(info: Any) -> None:
    click.echo(describe_job(info), err=True)
    if info.state != "completed":
        sys.exit(1)
    result = info.result or {}
    if "counts" in result:
        counts = ", ".join(f"{n} {outcome}" for outcome, n in result["counts"].items())
        click.echo(f"{result['rows']} rows: {counts}" + (" (dry run)" if result["dry_run"] else ""))
        for error in result["errors"][:10]:
            click.echo(f"  row {error['row']}, {error['column']}: {error['reason']}")
        if result.get("error_file"):
            click.echo(f"failed rows: {result['error_file']} (under the files directory)")
        if result.get("unmapped_columns"):
            click.echo(f"columns not imported: {', '.join(result['unmapped_columns'])}")
        for note in result.get("notes", []):
            click.echo(f"note: {note}")
    elif "path" in result:
        click.echo(f"{result['rows']} rows exported to {result['file']}")


@command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--entity", type=ENTITY_CHOICE, required=True)
@click.option("--tenant", default="default", show_default=True, help="Tenant id.")
@click.option("--user", "user_id", default="cli", show_default=True, help="Importing user.")
@click.option("--type", "file_type", type=click.Choice(["csv", "xlsx", "json"]), default=None)
@click.option("--map", "maps", multiple=True, metavar="FIELD=COLUMN", help="Map a column.")
@click.option("--dry-run", is_flag=True, help="Validate and count; write nothing.")
@click.option("--on-duplicate", type=click.Choice(["skip", "update", "create"]), default="skip")
@click.option(
    "--key",
    "duplicate_key",
    multiple=True,
    metavar="FIELD",
    help="Field that identifies a duplicate (repeat for fallbacks; default: the entity's).",
)
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--wait", is_flag=True, help="Show progress until done, then the summary.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Seconds for --wait.")
def import_command(
    file: str,
    entity: str,
    tenant: str,
    user_id: str,
    file_type: str | None,
    maps: tuple[str, ...],
    dry_run: bool,
    on_duplicate: str,
    duplicate_key: tuple[str, ...],
    batch_size: int,
    wait: bool,
    timeout: float | None,
) -> None:
    """Copy FILE under the files directory and enqueue its import; prints the job id."""
    import shutil
    import uuid

    from crmqueue import tasks

    mapping = {}
    for item in maps:
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise click.BadParameter(f"{item!r} is not FIELD=COLUMN", param_hint="--map")
        mapping[field.strip()] = column.strip()
    source = Path(file)
    kind = file_type or source.suffix.lower().lstrip(".").replace("jsonl", "json")
    if kind not in ("csv", "xlsx", "json"):
        raise click.BadParameter(f"cannot tell the type of {file}", param_hint="--type")
    broker = open_broker()
    relative = Path("imports") / uuid.uuid4().hex / source.name
    target = broker.settings.files.dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    job = tasks.import_records(
        tenant_id=tenant, user_id=user_id, file_url=relative.as_posix(), file_type=kind,
        entity_type=entity, mapping_config=mapping, dry_run=dry_run,
        on_duplicate=on_duplicate, duplicate_key=list(duplicate_key), batch_size=batch_size,
    )  # fmt: skip
    click.echo(job.id)
    if wait:
        _finish(_wait_with_progress(job, timeout))


@command("export")
@click.option("--entity", type=ENTITY_CHOICE, required=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "xlsx", "pdf"]), required=True)
@click.option("--tenant", default="default", show_default=True, help="Tenant id.")
@click.option("--user", "user_id", default="cli", show_default=True, help="Exporting user.")
@click.option("--fields", default="", help="Comma-separated fields (default: all).")
@click.option("--wait", is_flag=True, help="Show progress until done, then the file path.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Seconds for --wait.")
def export_command(
    entity: str,
    fmt: str,
    tenant: str,
    user_id: str,
    fields: str,
    wait: bool,
    timeout: float | None,
) -> None:
    """Enqueue an export of one entity; prints the job id."""
    from crmqueue import tasks

    open_broker()
    chosen = [name.strip() for name in fields.split(",") if name.strip()]
    job = tasks.export_records(
        tenant_id=tenant, user_id=user_id, entity_type=entity, format=fmt, fields=chosen
    )
    click.echo(job.id)
    if wait:
        _finish(_wait_with_progress(job, timeout))


COMMANDS = (import_command, export_command)
