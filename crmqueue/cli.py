"""The crmqueue command line: CLI -> Settings -> runtime, kept apart (the uvicorn shape)."""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crmqueue import __version__
from crmqueue.config import QUEUE_NAMES, Settings, load_settings
from crmqueue.engine import health as health_mod
from crmqueue.engine.queues import Broker, configure
from crmqueue.errors import ConfigError, CrmQueueError
from crmqueue.workers import BODY_MODULES

F = TypeVar("F", bound=Callable[..., Any])
console = Console(width=None if sys.stdout.isatty() else 160)
QUEUE_CHOICE = click.Choice(QUEUE_NAMES)
log = logging.getLogger("crmqueue")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.logging.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.logging.level)
    logging.getLogger("huey").setLevel(logging.WARNING)


def with_config(func: F) -> F:
    """Every command takes --config FILE (else $CRMQUEUE_CONFIG, else ./crmqueue.toml)."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="TOML config file (default: $CRMQUEUE_CONFIG, else ./crmqueue.toml if present).",
    )(func)


def load_bodies(settings: Settings) -> None:
    # Like uvicorn's --app-dir: modules named in runner.imports resolve from the working dir.
    if settings.runner.imports and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in (*BODY_MODULES, *settings.runner.imports):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"runner.imports: cannot import {module!r}: {exc}") from exc


def open_broker(config_file: str | None, overrides: dict[str, Any] | None = None) -> Broker:
    settings = load_settings(config_file, overrides)
    load_bodies(settings)
    return configure(settings)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


class CrmQueueGroup(click.Group):
    """Turns crmqueue's own errors into one clear line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CrmQueueError as exc:
            click.echo(f"crmqueue: error: {exc}", err=True)
            sys.exit(1)
        except TimeoutError as exc:
            click.echo(f"crmqueue: error: {exc}", err=True)
            sys.exit(1)


def build_commit() -> str:
    """The git commit crmqueue was built from: ``crmqueue/_build.py`` inside an executable
    (scripts/build.sh writes it), else ``git rev-parse`` in a checkout, else "unknown"."""
    try:
        built = getattr(importlib.import_module("crmqueue._build"), "COMMIT", None)
    except ImportError:
        built = None
    if built and getattr(sys, "frozen", False):
        return str(built)
    return _checkout_commit() or (str(built) if built else "unknown")


def _checkout_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            [*git, "diff", "--quiet", "HEAD", "--"], capture_output=True, timeout=5
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty == 1 else "")


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"crmqueue, version {__version__} (commit {build_commit()})")
    ctx.exit()


@click.group(cls=CrmQueueGroup)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and the git commit of this build, then exit.",
)
def main() -> None:
    """crmqueue: the background-job system of a CRM."""


# ------------------------------------------------------------------ consumers


# A onefile executable runs as a launcher process and a Python process; the launcher
# forwards every signal it gets, so a signal sent to the whole process group (Ctrl-C,
# systemd's default KillMode) arrives twice within microseconds. The same signal again
# within this window is that echo, not a second request.
SIGNAL_ECHO_SECONDS = 0.5


def _serve(broker: Broker, queues: list[str], workers: dict[str, int]) -> None:
    from crmqueue.engine.runner import Consumer

    configure_logging(broker.settings)
    executable = _executable_identity()
    consumer = Consumer(broker, queues, workers)
    stop = threading.Event()
    requests: list[tuple[int, float]] = []

    def on_signal(signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if requests and requests[-1][0] == signum and now - requests[-1][1] < SIGNAL_ECHO_SECONDS:
            return
        requests.append((signum, now))
        if len(requests) > 1:
            log.warning("second signal: exiting now; leases bring running jobs back")
            os._exit(1)
        action = "restarting" if signum == signal.SIGHUP else "stopping"
        log.info("received %s: %s gracefully", signal.Signals(signum).name, action)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    consumer.start()
    click.echo(
        f"crmqueue {__version__} consuming {', '.join(queues)} (consumer {consumer.id})", err=True
    )
    while not stop.wait(1.0):
        pass
    consumer.stop()
    if requests[0][0] == signal.SIGHUP:
        _reexec(executable)


def _executable_identity() -> tuple[int, int, int] | None:
    """Which file the running executable is, to notice a replaced binary on SIGHUP."""
    if not getattr(sys, "frozen", False):
        return None
    try:
        info = os.stat(sys.executable)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_mtime_ns


def _reexec(started_from: tuple[int, int, int] | None) -> None:
    """Replace this process (same pid) with a fresh crmqueue with the same arguments: it
    reads the configuration and imports the job modules again."""
    env = None
    if getattr(sys, "frozen", False):
        argv = [sys.executable, *sys.argv[1:]]
        if _executable_identity() != started_from:
            # A new binary was installed over the running one: its own files must be
            # unpacked, not the old executable's (which the launcher keeps until exit).
            env = {**os.environ, "PYINSTALLER_RESET_ENVIRONMENT": "1"}
    else:
        argv = [sys.executable, "-m", "crmqueue", *sys.argv[1:]]
    log.info("re-executing %s", " ".join(argv))
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if env is None:
            os.execv(argv[0], argv)
        else:
            os.execve(argv[0], argv, env)
    except OSError as exc:
        raise CrmQueueError(f"cannot restart: {argv[0]}: {exc.strerror or exc}") from None


@main.command()
@with_config
@click.option("--queues", default=",".join(QUEUE_NAMES), help="Comma-separated queues to consume.")
def run(config_file: str | None, queues: str) -> None:
    """Run the consumers of all (or the given) queues, with periodic health and retention."""
    names = [name.strip() for name in queues.split(",") if name.strip()]
    unknown = [name for name in names if name not in QUEUE_NAMES]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown queue {unknown[0] if unknown else '(none)'}; queues are "
            + ", ".join(QUEUE_NAMES),
            param_hint="--queues",
        )
    broker = open_broker(config_file)
    _serve(broker, names, {})


@main.command()
@with_config
@click.argument("queue", type=QUEUE_CHOICE)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker threads.")
def worker(config_file: str | None, queue: str, workers: int | None) -> None:
    """Run one queue's consumer (run several, on several hosts, to scale out)."""
    broker = open_broker(config_file)
    _serve(broker, [queue], {queue: workers} if workers else {})


# ------------------------------------------------------------------ producing


def _read_payload(json_text: str | None, file: str | None) -> dict[str, Any]:
    if (json_text is None) == (file is None):
        raise click.UsageError("give exactly one of --json or --file")
    source = "--json"
    if file is not None:
        source = file
        try:
            json_text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise CrmQueueError(f"{file}: {exc.strerror}") from None
    try:
        payload = json.loads(json_text or "")
    except json.JSONDecodeError as exc:
        raise CrmQueueError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise CrmQueueError(f"{source}: the payload must be a JSON object")
    return payload


def _describe(info: Any) -> str:
    line = f"job {info.id} {info.state} (attempts {info.attempts}/{info.max_attempts})"
    if info.state == "dead" and info.errors:
        last = info.errors[-1]
        line += f": {last['type']}: {last['message']}"
    return line


@main.command()
@with_config
@click.argument("queue", type=QUEUE_CHOICE)
@click.option("--json", "json_text", default=None, help="The payload as a JSON object.")
@click.option("--file", type=click.Path(dir_okay=False), default=None, help="A JSON payload file.")
@click.option("--kind", default=None, help="Job kind (e.g. import, export, publish).")
@click.option("--priority", type=int, default=None, help="Higher runs first (-1000..1000).")
@click.option("--delay", type=click.FloatRange(min=0), default=None, help="Seconds to wait.")
@click.option("--wait", is_flag=True, help="Wait until the job is completed or dead.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Seconds for --wait.")
def enqueue(
    config_file: str | None,
    queue: str,
    json_text: str | None,
    file: str | None,
    kind: str | None,
    priority: int | None,
    delay: float | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Validate a payload and enqueue it; prints the job id."""
    from crmqueue import tasks

    payload = _read_payload(json_text, file)
    open_broker(config_file)
    job = tasks.enqueue(queue, payload, kind=kind, priority=priority, delay=delay)
    click.echo(job.id)
    if wait:
        info = job.wait(timeout)
        click.echo(_describe(info), err=True)
        if info.state != "completed":
            sys.exit(1)


# ------------------------------------------------------------------ observing


_STATS_COLUMNS = {
    "queue": "queue", "waiting": "wait", "active": "active", "delayed": "delay",
    "scheduled": "sched", "completed": "done", "failed": "failed", "dead": "dead",
    "workers": "workers", "throughput_per_min": "/min", "failure_rate": "fail%",
    "healthy": "ok",
}  # fmt: skip


def _stats_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="crmqueue queues")
    for key, header in _STATS_COLUMNS.items():
        table.add_column(header, justify="left" if key == "queue" else "right", no_wrap=True)
    for row in rows:
        cells = [str(row[key]) for key in _STATS_COLUMNS]
        cells[-2] = f"{row['failure_rate'] * 100:.1f}"
        cells[-1] = "[green]yes[/]" if row["healthy"] else "[red]no[/]"
        table.add_row(*cells)
    return table


@main.command()
@with_config
@click.argument("queue", type=QUEUE_CHOICE, required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats(config_file: str | None, queue: str | None, as_json: bool) -> None:
    """Counts, throughput and failure rate per queue."""
    broker = open_broker(config_file)
    names = [queue] if queue else list(QUEUE_NAMES)
    rows = [health_mod.stats(broker, name) for name in names]
    if as_json:
        emit_json(rows[0] if queue else rows)
    else:
        console.print(_stats_table(rows))


@main.command()
@with_config
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def health(config_file: str | None, as_json: bool) -> None:
    """Exit 0 healthy, 1 degraded, 2 error (storage unreachable or a queue without consumer)."""
    broker = open_broker(config_file)
    report = health_mod.health(broker)
    last = None
    if report["status"] != "error" or report["queues"]:
        last = health_mod.last_check(broker)
    report["last_check"] = last["timestamp"] if last else None
    if as_json:
        emit_json(report)
    else:
        colour = {"healthy": "green", "degraded": "yellow", "error": "red"}[report["status"]]
        console.print(f"status: [{colour}]{report['status']}[/]  at {report['timestamp']}")
        if report.get("error"):
            console.print(f"error: {report['error']}")
        console.print(f"last periodic check: {report['last_check'] or 'never'}")
        if report["queues"]:
            console.print(_stats_table(report["queues"]))
            for row in report["queues"]:
                if row["consumers"] == 0:
                    console.print(f"[red]queue {row['queue']}: no live consumer[/]")
    sys.exit(health_mod.EXIT_CODES[report["status"]])


@main.group()
def jobs() -> None:
    """Show, retry or remove one job."""


def _job_command(name: str, help_text: str) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        func = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(
            func
        )
        func = click.argument("job_id")(func)
        func = with_config(func)
        return jobs.command(name=name, help=help_text)(func)  # type: ignore[return-value]

    return decorate


def _print_job(info: Any, as_json: bool) -> None:
    if as_json:
        emit_json(info.to_dict())
        return
    table = Table(show_header=False, title=f"job {info.id}")
    for key, value in info.to_dict().items():
        if key == "errors":
            value = "\n".join(f"{e['type']}: {e['message']}" for e in value) or "-"
        elif isinstance(value, dict | list):
            value = json.dumps(value)
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


@_job_command("show", "Show a job's state, progress, attempts, errors and result.")
def jobs_show(config_file: str | None, job_id: str, as_json: bool) -> None:
    from crmqueue import jobs as jobs_api

    open_broker(config_file)
    _print_job(jobs_api.get(job_id), as_json)


@_job_command("retry", "Put a dead job back to waiting with a fresh attempt budget.")
def jobs_retry(config_file: str | None, job_id: str, as_json: bool) -> None:
    from crmqueue import jobs as jobs_api

    open_broker(config_file)
    _print_job(jobs_api.retry(job_id), as_json)


@_job_command("remove", "Delete a waiting, scheduled, delayed or dead job.")
def jobs_remove(config_file: str | None, job_id: str, as_json: bool) -> None:
    from crmqueue import jobs as jobs_api

    open_broker(config_file)
    _print_job(jobs_api.remove(job_id), as_json)


@main.group()
def dlq() -> None:
    """The dead-letter sets: list and replay."""


@dlq.command("list")
@with_config
@click.argument("queue", type=QUEUE_CHOICE, required=False)
@click.option("--limit", type=click.IntRange(min=1), default=100)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def dlq_list(config_file: str | None, queue: str | None, limit: int, as_json: bool) -> None:
    """List dead jobs with their last error."""
    from crmqueue import jobs as jobs_api

    open_broker(config_file)
    dead = [
        info for name in ([queue] if queue else QUEUE_NAMES) for info in jobs_api.dead(name, limit)
    ]
    if as_json:
        emit_json([info.to_dict() for info in dead])
        return
    table = Table(title="dead jobs")
    for column in ("id", "queue", "tenant", "name", "attempts", "died", "last error"):
        table.add_column(column)
    for info in dead:
        last = info.errors[-1] if info.errors else {"type": "-", "message": ""}
        table.add_row(
            info.id, info.queue, info.tenant, info.name.rsplit(".", 1)[-1],
            f"{info.attempts}/{info.max_attempts}", info.finished_at or "-",
            f"{last['type']}: {last['message']}"[:120],
        )  # fmt: skip
    console.print(table)


@dlq.command("replay")
@with_config
@click.argument("job_id", required=False)
@click.option("--all", "all_queue", type=QUEUE_CHOICE, default=None, help="Replay a whole queue.")
def dlq_replay(config_file: str | None, job_id: str | None, all_queue: str | None) -> None:
    """Put one dead job, or every dead job of a queue, back to waiting."""
    from crmqueue import jobs as jobs_api

    if (job_id is None) == (all_queue is None):
        raise click.UsageError("give a JOB_ID or --all QUEUE")
    open_broker(config_file)
    ids = [jobs_api.retry(job_id).id] if job_id else jobs_api.replay_dead(all_queue or "")
    for replayed in ids:
        click.echo(replayed)
    click.echo(f"replayed {len(ids)} job(s)", err=True)


@main.group("config")
def config_group() -> None:
    """Show or check the effective configuration, or print the documented defaults."""


@config_group.command("show")
@with_config
def config_show(config_file: str | None) -> None:
    """Print the effective configuration as JSON, secrets masked."""
    emit_json(load_settings(config_file).public_dict())


@config_group.command("check")
@with_config
def config_check(config_file: str | None) -> None:
    """Validate the configuration; exit non-zero naming every bad key."""
    settings = load_settings(config_file)
    load_bodies(settings)
    click.echo("configuration ok")


def default_config_file() -> Path | None:
    """config/crmqueue.toml: bundled inside the executable, or in a source checkout."""
    candidates = [Path(__file__).resolve().parent.parent / "config" / "crmqueue.toml"]
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates.insert(0, Path(bundle) / "config" / "crmqueue.toml")
    return next((path for path in candidates if path.is_file()), None)


@config_group.command("default")
def config_default() -> None:
    """Print the documented default configuration: every key, its default and a comment."""
    path = default_config_file()
    if path is None:
        raise CrmQueueError(
            "this installation does not include config/crmqueue.toml (see the source tree)"
        )
    click.echo(path.read_text(encoding="utf-8"), nl=False)


# ------------------------------------------------------------------ CRM data (issue 5)


@main.group("db")
def db_group() -> None:
    """The CRM database: create or upgrade its schema, seed demo data."""


@db_group.command("init")
@with_config
def db_init(config_file: str | None) -> None:
    """Create the CRM schema, or upgrade an existing database keeping its data."""
    from crmqueue.config import mask_url
    from crmqueue.crm.store import create_engine, init_db

    settings = load_settings(config_file)
    engine = create_engine(settings.database.url)
    try:
        before, after = init_db(engine)
    finally:
        engine.dispose()
    where = mask_url(settings.database.url)
    if before == after:
        click.echo(f"CRM database {where}: schema version {after}, up to date")
    else:
        click.echo(f"CRM database {where}: schema version {before} -> {after}")


@db_group.command("seed")
@with_config
@click.option("--tenant", required=True, help="Tenant id of the demo data.")
@click.option("--contacts", type=click.IntRange(min=0), default=1000, show_default=True)
def db_seed(config_file: str | None, tenant: str, contacts: int) -> None:
    """Insert realistic demo data for one tenant (companies, contacts, leads, activities)."""
    from crmqueue.crm.store import create_engine, init_db, seed

    settings = load_settings(config_file)
    engine = create_engine(settings.database.url)
    try:
        init_db(engine)
        counts = seed(engine, tenant, contacts)
    finally:
        engine.dispose()
    click.echo(", ".join(f"{count} {name}" for name, count in counts.items()))


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
    click.echo(_describe(info), err=True)
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


ENTITY_CHOICE = click.Choice(["contacts", "companies", "leads", "activities"])


@main.command("import")
@with_config
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
    config_file: str | None,
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
    broker = open_broker(config_file)
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


@main.command("export")
@with_config
@click.option("--entity", type=ENTITY_CHOICE, required=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "xlsx", "pdf"]), required=True)
@click.option("--tenant", default="default", show_default=True, help="Tenant id.")
@click.option("--user", "user_id", default="cli", show_default=True, help="Exporting user.")
@click.option("--fields", default="", help="Comma-separated fields (default: all).")
@click.option("--wait", is_flag=True, help="Show progress until done, then the file path.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Seconds for --wait.")
def export_command(
    config_file: str | None,
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

    open_broker(config_file)
    chosen = [name.strip() for name in fields.split(",") if name.strip()]
    job = tasks.export_records(
        tenant_id=tenant, user_id=user_id, entity_type=entity, format=fmt, fields=chosen
    )
    click.echo(job.id)
    if wait:
        _finish(_wait_with_progress(job, timeout))


# ------------------------------------------------------------------ deployment


@main.command()
@with_config
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(config_file: str | None, as_json: bool) -> None:
    """Check a deployment: config, storage, clock, directories, email, database.

    Exits 1 when a check FAILs. Secrets never print."""
    from crmqueue.doctor import run_checks

    checks = run_checks(config_file)
    failed = any(check.status == "FAIL" for check in checks)
    if as_json:
        emit_json({"ok": not failed, "checks": [check.to_dict() for check in checks]})
    else:
        table = Table(title="crmqueue doctor")
        for column in ("check", "status", "detail"):
            table.add_column(column, no_wrap=column != "detail")
        colours = {"ok": "green", "warn": "yellow", "FAIL": "bold red"}
        for check in checks:
            status = f"[{colours[check.status]}]{check.status}[/]"
            table.add_row(check.name, status, escape(check.detail))
        console.print(table)
    sys.exit(1 if failed else 0)


# ------------------------------------------------------------------ email (issue 6)


@main.group("email")
def email_group() -> None:
    """Preview email templates; send a test message through the configured provider."""


@email_group.command("template-add")
@with_config
@click.argument("name")
@click.option("--tenant", required=True, help="The tenant the template belongs to.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, exists=True), required=True)
@click.option("--text", "text_file", type=click.Path(dir_okay=False, exists=True), required=True)
def email_template_add(
    config_file: str | None, name: str, tenant: str, html_file: str, text_file: str
) -> None:
    """Register a tenant's own template NAME (HTML and text; rendered in Jinja2's sandbox).
    A tenant template with a built-in's name replaces the built-in for that tenant."""
    from crmqueue.providers.email.render import register_tenant_template

    settings = load_settings(config_file)
    directory = register_tenant_template(
        Path(settings.files.dir),
        tenant,
        name,
        Path(html_file).read_text(encoding="utf-8"),
        Path(text_file).read_text(encoding="utf-8"),
    )
    click.echo(f"template {name!r} registered for tenant {tenant!r} in {directory}")


@email_group.command("preview")
@with_config
@click.argument("template")
@click.option("--context", "context_json", default="{}", help="Template variables (JSON object).")
@click.option("--subject", default=None, help="Subject (default: the template's own).")
@click.option("--tenant", default=None, help="Use this tenant's template if it has one.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write <template>.html and <template>.txt into this directory instead of printing.",
)
def email_preview(
    config_file: str | None,
    template: str,
    context_json: str,
    subject: str | None,
    tenant: str | None,
    out: str | None,
) -> None:
    """Render TEMPLATE (HTML and text) with --context and print or save it."""
    from crmqueue.providers.email.render import render, tenant_template_dir

    settings = load_settings(config_file)
    try:
        context = json.loads(context_json)
    except ValueError as exc:
        raise CrmQueueError(f"--context is not valid JSON: {exc}") from exc
    if not isinstance(context, dict):
        raise CrmQueueError("--context must be a JSON object")
    tenant_dir = tenant_template_dir(Path(settings.files.dir), tenant) if tenant else None
    rendered = render(template, context, subject, tenant_dir=tenant_dir)
    if out:
        directory = Path(out)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{template}.html").write_text(rendered.html, encoding="utf-8")
        (directory / f"{template}.txt").write_text(rendered.text, encoding="utf-8")
        click.echo(f"Subject: {rendered.subject}")
        click.echo(f"wrote {directory / f'{template}.html'} and {directory / f'{template}.txt'}")
        return
    click.echo(f"Subject: {rendered.subject}\n\n--- text ---\n{rendered.text}\n--- html ---")
    click.echo(rendered.html)


@email_group.command("test")
@with_config
@click.option("--to", "address", required=True, help="Recipient address.")
def email_test(config_file: str | None, address: str) -> None:
    """Send a test message through the configured provider; print the vendor's message id."""
    import uuid

    from crmqueue.payloads import EmailPayload, validate_payload
    from crmqueue.providers.email import get_provider
    from crmqueue.workers.email import build_email

    settings = load_settings(config_file)
    payload = validate_payload(
        EmailPayload,
        {
            "tenant_id": "crmqueue-test",
            "to": address,
            "subject": "crmqueue test email",
            "template": "welcome",
            "context": {"first_name": "there"},
        },
    )
    email = build_email(payload, settings, f"crmqueue-test-{uuid.uuid4().hex}")
    result = get_provider(settings.email).send(email)
    click.echo(f"sent through {result.provider}: message id {result.message_id}")
