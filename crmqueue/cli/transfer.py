"""``crmqueue import`` and ``crmqueue export``: CRM records from and to files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, get_args

import click

from crmqueue.cli.common import command, console, describe_job, open_broker

ENTITY_CHOICE = click.Choice(["contacts", "companies", "leads", "activities"])
# A file's suffix names its type, but for these.
SUFFIX_TYPES = {"jsonl": "json", "ndjson": "json"}


def _file_type(file: str, given: str | None) -> str:
    """--type, else the type FILE's suffix names; one of the import payload's file types
    (read here, not at start-up: the payload models cost every command ~0.1 s to import),
    else click.BadParameter naming --type and listing them."""
    from crmqueue.payloads import ImportPayload

    types: tuple[str, ...] = get_args(ImportPayload.model_fields["file_type"].annotation)
    suffix = Path(file).suffix.lower().lstrip(".")
    kind = given.lower() if given else SUFFIX_TYPES.get(suffix, suffix)
    if kind not in types:
        what = f"{given!r} is not a file type" if given else f"cannot tell the type of {file}"
        raise click.BadParameter(f"{what} (types: {', '.join(types)})", param_hint="--type")
    return kind


def _pairs(items: tuple[str, ...], option: str, form: str) -> list[tuple[str, str]]:
    """``NAME=VALUE`` items as (name, value), both trimmed; raises click.BadParameter naming
    the option for an item without ``=`` or without a name (and, for --map, a value)."""
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or (option == "--map" and not value.strip()):
            raise click.BadParameter(f"{item!r} is not {form}", param_hint=option)
        pairs.append((name.strip(), value.strip()))
    return pairs


def _filters(items: tuple[str, ...]) -> dict[str, Any]:
    """--filter FIELD=VALUE items as an export payload's ``filters``: one value for a field
    given once, a list (any of them) for a field given several times, None (empty) for
    ``FIELD=``. The values stay strings: the payload reads them as the field's type."""
    filters: dict[str, Any] = {}
    for name, value in _pairs(items, "--filter", "FIELD=VALUE"):
        typed = value or None
        if name not in filters:
            filters[name] = typed
        elif isinstance(filters[name], list):
            filters[name].append(typed)
        else:
            filters[name] = [filters[name], typed]
    for name, value in filters.items():
        if isinstance(value, list) and None in value:
            raise click.BadParameter(
                f"{name}: an empty value (FIELD=) cannot be one of several values",
                param_hint="--filter",
            )
    return filters


def _wait_with_progress(job: Any, timeout: float | None) -> Any:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        console=console,
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
        rows = result["rows"]
        click.echo(f"{rows} {'row' if rows == 1 else 'rows'} exported to {result['file']}")
        for warning in result.get("warnings", []):
            click.echo(f"warning: {warning}")


@command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--entity", type=ENTITY_CHOICE, required=True)
@click.option("--tenant", default="default", show_default=True, help="Tenant id.")
@click.option("--user", "user_id", default="cli", show_default=True, help="Importing user.")
@click.option(
    "--type",
    "file_type",
    metavar="TYPE",
    default=None,
    help="csv, xlsx, json ... (default: by the file's suffix; .jsonl is json).",
)
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
@click.option(
    "--decimal-comma/--no-decimal-comma",
    default=None,
    help="Numbers are written 1.250,50 (or are not); default: detected for semicolon files.",
)
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
    decimal_comma: bool | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Copy FILE under the files directory and enqueue its import; prints the job id."""
    import shutil
    import uuid

    from crmqueue import tasks

    mapping = dict(_pairs(maps, "--map", "FIELD=COLUMN"))
    source = Path(file)
    kind = _file_type(file, file_type)
    broker = open_broker()
    # The worker reads a path as it is ('#', '?', '%' and all) but for a trailing
    # '#sheet=Name', which no copy's name may end in.
    relative = Path("imports") / uuid.uuid4().hex / source.name.replace("#sheet=", "_sheet=")
    target = broker.settings.files.dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    payload = {
        "tenant_id": tenant, "user_id": user_id, "file_url": relative.as_posix(),
        "file_type": kind, "entity_type": entity, "mapping_config": mapping,
        "dry_run": dry_run, "on_duplicate": on_duplicate,
        "duplicate_key": list(duplicate_key), "batch_size": batch_size,
    }  # fmt: skip
    if decimal_comma is not None:  # absent: the worker detects it
        payload["decimal_comma"] = decimal_comma
    job = tasks.enqueue("import-export", payload, kind="import")
    click.echo(job.id)
    if wait:
        _finish(_wait_with_progress(job, timeout))


@command("export")
@click.option("--entity", type=ENTITY_CHOICE, required=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "xlsx", "pdf"]), required=True)
@click.option("--tenant", default="default", show_default=True, help="Tenant id.")
@click.option("--user", "user_id", default="cli", show_default=True, help="Exporting user.")
@click.option("--fields", default="", help="Comma-separated fields (default: all).")
@click.option(
    "--filter",
    "filter_items",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Export only records whose FIELD equals VALUE (repeat a field: any of the values;"
    " FIELD= : empty). Repeatable.",
)
@click.option("--wait", is_flag=True, help="Show progress until done, then the file path.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Seconds for --wait.")
def export_command(
    entity: str,
    fmt: str,
    tenant: str,
    user_id: str,
    fields: str,
    filter_items: tuple[str, ...],
    wait: bool,
    timeout: float | None,
) -> None:
    """Enqueue an export of one entity (all its records, or those matching every --filter);
    prints the job id."""
    from crmqueue import tasks

    filters = _filters(filter_items)
    open_broker()
    chosen = [name.strip() for name in fields.split(",") if name.strip()]
    job = tasks.export_records(
        tenant_id=tenant, user_id=user_id, entity_type=entity, format=fmt, fields=chosen,
        filters=filters,
    )  # fmt: skip
    click.echo(job.id)
    if wait:
        _finish(_wait_with_progress(job, timeout))


COMMANDS = (import_command, export_command)
