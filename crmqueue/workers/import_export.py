"""The import-export queue: import records from CSV/XLSX/JSON into the CRM store, export
them to CSV/XLSX/PDF.

Imports run in batches of `batch_size` rows, each in one transaction that also records the
batch in `import_checkpoints` under the job id; a retried job skips the batches already
committed, so a crash never duplicates rows. A dry run validates and counts only.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import itertools
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Connection, Engine

from crmqueue.config import OutboundSettings, Settings
from crmqueue.crm import schema
from crmqueue.crm.entities import (
    KEY_FIELDS,
    ROW_MODELS,
    ExportCheckError,
    check_export_fields,
    check_export_filters,
    complete_names,
    entity_fields,
    header_field,
    number_fields,
    number_style,
    row_key,
)
from crmqueue.crm.store import (
    contact_update,
    filter_conditions,
    get_engine,
    last_lead_id,
    now,
    record_new_leads,
    record_stage_change,
)
from crmqueue.engine.queues import get_broker, job
from crmqueue.engine.runner import current_job_id, report_progress
from crmqueue.errors import CrmQueueError, PermanentError
from crmqueue.formats.pdf import DEFAULT_MAX_PDF_CELLS, write_pdf
from crmqueue.formats.readers import (
    PEEK_RECORDS,
    WHOLE_ROW,
    ProblemRow,
    Row,
    Table,
    cell_problem,
    cells_fine,
    open_table,
    printable,
)
from crmqueue.formats.writers import ExportNotes, write_csv, write_xlsx
from crmqueue.payloads import ExportPayload, ImportPayload
from crmqueue.providers import http
from crmqueue.url_rules import source_parts
from crmqueue.workers.notification import notify_in_app

log = logging.getLogger(__name__)

MAX_IMPORT_BYTES = 1024 * 1024 * 1024  # 1 GiB
MAX_REPORTED_ERRORS = 1000
OUTCOMES = ("new", "updated", "skipped", "invalid")

Progress = Callable[[float], None]
Key = tuple[str, str]


def _job_progress(percent: float) -> None:
    if current_job_id() is not None:
        report_progress(percent)


# --------------------------------------------------------------------------- sources


def is_remote_source(file_url: str) -> bool:
    return urlsplit(file_url).scheme.lower() in ("http", "https")


def download_source(
    url: str,
    files_dir: Path,
    extension: str,
    outbound: OutboundSettings,
    deadline: float | None = None,
) -> Path:
    """Fetch an http(s) source through the SSRF-guarded client into a file of this run's
    own (a fresh name, so a stalled earlier attempt still writing cannot collide); the
    caller deletes it. `deadline`: seconds for the whole download (RetryableError past it)."""
    dest = files_dir.resolve() / "imports" / "downloads" / f"{uuid.uuid4().hex}.{extension}"
    http.download(
        url,
        dest,
        max_bytes=MAX_IMPORT_BYTES,
        allowed_networks=outbound.networks(),
        what="import source",
        deadline=deadline,
    )
    return dest


def resolve_source(
    file_url: str,
    files_dir: Path,
    *,
    file_type: str | None = None,
    outbound: OutboundSettings | None = None,
    download_deadline: float | None = None,
) -> tuple[Path, str | None]:
    """The local file a payload's `file_url` names, confined to the files directory (or,
    for an http(s) URL, downloaded there: see `download_source`), and the sheet named by a
    `#sheet=Name` fragment."""
    # A path keeps its '#', '?' and '%' (file names have them); a URL's '#' is its fragment.
    scheme, url, sheet = source_parts(file_url)
    parts = urlsplit(url)
    if scheme in ("http", "https"):
        path = download_source(
            url, files_dir, file_type or "download", outbound or OutboundSettings(),
            download_deadline,
        )  # fmt: skip
        return path, sheet
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise PermanentError(f"file:// URL with a remote host {parts.netloc!r}")
        raw = unquote(parts.path)
    elif scheme == "":
        raw = url
    else:
        raise PermanentError(f"unsupported file_url scheme {scheme!r} (use a path or file://)")
    base = files_dir.resolve()
    candidate = Path(raw)
    resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not resolved.is_relative_to(base):
        raise PermanentError(f"file_url {file_url!r} is outside the files directory")
    if not resolved.is_file():
        raise PermanentError(f"file_url {file_url!r}: no such file under the files directory")
    size = resolved.stat().st_size
    if size > MAX_IMPORT_BYTES:
        raise PermanentError(
            f"{resolved.name}: {size} bytes is over the import limit of {MAX_IMPORT_BYTES} bytes"
        )
    return resolved, sheet


def _column_list(columns: list[str], limit: int = 50) -> str:
    shown = ", ".join(map(repr, columns[:limit]))
    return shown + (f", ... ({len(columns) - limit} more)" if len(columns) > limit else "")


def build_mapping(
    entity: str,
    columns: list[str],
    mapping_config: dict[str, str],
    repeated: Mapping[str, list[str]] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """(CRM field -> source column, source columns not used). Without `mapping_config` a
    column maps to the field its header names, ignoring case, white space, '.', '-' and
    '_' (crmqueue.crm.entities.header_field: "First Name", "firstName", "E-Mail"); two
    columns naming one field are refused, as is a header given to several columns
    (`repeated`, see Table.repeated) when it is used (``email,email``: which one?), and a
    file whose columns name no field or miss a required one (PermanentError listing the
    columns found). mapping_config may name a repeated header's later copy (``email_2``)."""
    fields = entity_fields(entity)
    if mapping_config:  # its fields were checked (and put in snake_case) by ImportPayload
        missing = [col for col in mapping_config.values() if col not in columns]
        if missing:
            raise PermanentError(
                f"mapping_config: column(s) {', '.join(map(repr, missing))} not in the file"
                f" (columns: {_column_list(columns)})"
            )
        mapping = dict(mapping_config)
    else:
        matches: dict[str, list[str]] = {}
        for column in columns:
            field = header_field(entity, column)
            if field is not None:
                matches.setdefault(field, []).append(column)
        ambiguous = {field: cols for field, cols in matches.items() if len(cols) > 1}
        if ambiguous:
            raise PermanentError(
                "; ".join(
                    f"columns {' and '.join(map(repr, cols))} both name the {entity} field {field}"
                    for field, cols in ambiguous.items()
                )
                + ": rename or remove one, or pass mapping_config"
            )
        mapping = {field: cols[0] for field, cols in matches.items()}
    ambiguous_headers = [
        f"the header {text!r} is on {len(named)} columns (read as {', '.join(map(repr, named))})"
        for text, named in (repeated or {}).items()
        if text in mapping.values()
    ]
    if ambiguous_headers:
        raise PermanentError(
            "; ".join(ambiguous_headers)
            + ": which one to import is ambiguous; rename the columns, or name one in"
            " mapping_config"
        )
    if not mapping:
        raise PermanentError(
            f"no column maps to a {entity} field (columns: {_column_list(columns)};"
            f" fields: {', '.join(fields)}); pass mapping_config"
        )
    model = ROW_MODELS[entity]
    required = [n for n, f in model.model_fields.items() if f.is_required() and n not in mapping]
    if required:
        raise PermanentError(
            f"no column maps to the required {entity} field(s) {', '.join(required)}"
            f" (columns: {_column_list(columns)}); "
            + ("add it to mapping_config" if mapping_config else "pass mapping_config")
        )
    used = set(mapping.values())
    return mapping, [col for col in columns if col not in used]


# --------------------------------------------------------------------------- import


def hash_key(key: Key) -> int:
    digest = hashlib.blake2b(f"{key[0]}\0{key[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Importer:
    """One import run: see the module docstring."""

    def __init__(
        self,
        payload: ImportPayload,
        engine: Engine,
        files_dir: Path,
        job_id: str | None,
        progress: Progress = _job_progress,
        on_batch: Callable[[int], None] | None = None,
        outbound: OutboundSettings | None = None,
        contact_statuses: Sequence[str] | None = None,
        download_deadline: float | None = None,
    ) -> None:
        self.p = payload
        # Seconds for the whole download of an http(s) source (see download_deadline()).
        self.download_deadline = download_deadline
        # The validation context of each row: the statuses a contact may have (None: the
        # configured ones, crmqueue.crm.entities.contact_statuses).
        self.row_context: dict[str, Any] | None = (
            {"contact_statuses": contact_statuses} if contact_statuses else None
        )
        self.is_contacts = payload.entity_type == "contacts"
        # Leads record their stage changes (pipeline.stage_changed) in the stage history.
        self.is_leads = payload.entity_type == "leads"
        self.engine = engine
        self.files_dir = files_dir
        self.job_id = job_id
        self.progress = progress
        self.on_batch = on_batch  # called after each committed batch (its 0-based index)
        self.outbound = outbound or OutboundSettings()
        self.table_def = schema.ENTITY_TABLES[payload.entity_type]
        self.model = ROW_MODELS[payload.entity_type]
        self.key_fields = tuple(payload.duplicate_key) or KEY_FIELDS[payload.entity_type]
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.errors: list[dict[str, Any]] = []
        self.error_rows = 0
        # Keys of earlier batches, kept only on a dry run (a real run finds them in the
        # database); 64-bit hashes, so a million keys stay within a few tens of megabytes.
        self.seen: set[int] = set()
        self._error_file: Any = None
        self._error_writer: Any = None
        self.error_path: Path | None = None
        self.inserted = 0
        self.analyze_at = 1000  # rows inserted before the next ANALYZE

    # -- reading

    def run(self) -> dict[str, Any]:
        path, sheet = resolve_source(
            self.p.file_url, self.files_dir, file_type=self.p.file_type, outbound=self.outbound,
            download_deadline=self.download_deadline,
        )  # fmt: skip
        try:
            return self._import(path, sheet)
        finally:
            if is_remote_source(self.p.file_url):
                # This run's own copy: a retry downloads the URL again.
                path.unlink(missing_ok=True)

    def _import(self, path: Path, sheet: str | None) -> dict[str, Any]:
        table = open_table(path, self.p.file_type, sheet)
        self.columns = table.columns
        self.mapping, unmapped = build_mapping(
            self.p.entity_type, table.columns, self.p.mapping_config, table.repeated
        )
        self.source_for = {field: col for field, col in self.mapping.items()}
        self.used_columns = set(self.mapping.values())
        self.column_set = set(table.columns)
        self.decimal_comma = self._decimal_comma(table)
        # Read by crmqueue.crm.entities: serial numbers in date columns, decimal commas.
        self.row_context = {
            **(self.row_context or {}),
            "date_system": table.date_system,
            "decimal_comma": self.decimal_comma,
        }
        done_batch = self._checkpoint()
        total = 0
        try:
            for index, batch in enumerate(self._batches(table)):
                total += len(batch)
                if index <= done_batch:
                    self._replay(batch)
                else:
                    self._run_batch(index, batch)
                    if self.on_batch is not None:
                        self.on_batch(index)
                fraction = table.progress()
                if fraction is not None:
                    self.progress(min(99.0, fraction * 100))
        finally:
            if self._error_file is not None:
                self._error_file.close()
        if total == 0:
            raise PermanentError(f"{path.name}: a header row but no data rows")
        self.progress(100)
        return {
            "entity_type": self.p.entity_type,
            "dry_run": self.p.dry_run,
            "on_duplicate": self.p.on_duplicate,
            "duplicate_key": list(self.key_fields),
            "rows": total,
            "counts": self.counts,
            "errors": self.errors,
            "errors_truncated": self.error_rows > 0 and len(self.errors) >= MAX_REPORTED_ERRORS,
            "error_file": self.error_path.relative_to(self.files_dir.resolve()).as_posix()
            if self.error_path
            else None,
            "mapping": self.mapping,
            "unmapped_columns": unmapped,
            "encoding": table.encoding,
            "notes": table.notes,
            "decimal_comma": self.decimal_comma,
            "resumed_after_batch": done_batch if done_batch >= 0 else None,
        }

    def _batches(self, table: Table) -> Iterator[list[tuple[int, Row]]]:
        batch: list[tuple[int, Row]] = []
        for item in table.rows:
            batch.append(item)
            if len(batch) >= self.p.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    # -- checkpoints

    def _checkpoint(self) -> int:
        """The last batch committed by an earlier attempt of this job (-1: none); restores
        its counts."""
        if self.p.dry_run or not self.job_id:
            return -1
        cp = schema.import_checkpoints
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(cp.c.last_batch, cp.c.counts).where(
                    cp.c.job_id == self.job_id, cp.c.tenant_id == self.p.tenant_id
                )
            ).first()
        if found is None:
            return -1
        self.counts = dict(found.counts)
        return int(found.last_batch)

    def _save_checkpoint(self, conn: Connection, index: int) -> None:
        if not self.job_id:
            return
        cp = schema.import_checkpoints
        values = {"last_batch": index, "counts": dict(self.counts), "updated_at": now()}
        updated = conn.execute(
            cp.update()
            .where(cp.c.job_id == self.job_id, cp.c.tenant_id == self.p.tenant_id)
            .values(**values)
        )
        if updated.rowcount == 0:
            conn.execute(
                cp.insert().values(job_id=self.job_id, tenant_id=self.p.tenant_id, **values)
            )

    # -- validation

    def _validate(self, number: int, row: Row) -> dict[str, Any] | None:
        data = {field: row.get(col) for field, col in self.mapping.items()}
        problems = self._cell_problems(row, data)
        if problems:
            self._refuse(number, row, problems)
            return None
        try:
            return self.model.model_validate(data, context=self.row_context).model_dump()
        except ValidationError as exc:
            reasons = []
            for err in exc.errors():
                field = str(err["loc"][0]) if err["loc"] else ""
                reasons.append((self.source_for.get(field, field), err["msg"]))
            self._refuse(number, row, reasons)
            return None

    def _cell_problems(self, row: Row, data: dict[str, str | None]) -> list[tuple[str, str]]:
        """(column, reason) of what the reader could not read in the columns this import
        uses (or in the whole row), and of cells that cannot be stored as text."""
        problems: list[tuple[str, str]] = []
        if isinstance(row, ProblemRow):
            problems = [
                (column, reason)
                for column, reason in row.problems.items()
                if column == WHOLE_ROW
                or column in self.used_columns
                or (column not in self.column_set and self._would_map(column))
            ]
        if not cells_fine(data.values()):
            for field, value in data.items():
                if value is not None and (reason := cell_problem(value)) is not None:
                    problems.append((self.source_for[field], reason))
        return problems

    def _would_map(self, key: str) -> bool:
        """Whether a key first seen after the columns were learned (JSON) would have been
        used had it been among them: with mapping_config only its columns are used (all
        of them are in the file), without it a key naming a field would map (or clash
        with the column naming it). A key naming no field is ignored in every row."""
        return not self.p.mapping_config and header_field(self.p.entity_type, key) is not None

    def _refuse(self, number: int, row: Row, reasons: list[tuple[str, str]]) -> None:
        for column, reason in reasons:
            if len(self.errors) < MAX_REPORTED_ERRORS:
                self.errors.append({"row": number, "column": column, "reason": reason})
        self.error_rows += 1
        text = "; ".join(f"{column}: {reason}" if column else reason for column, reason in reasons)
        self._write_error(number, row, text)

    def _decimal_comma(self, table: Table) -> bool | None:
        """The payload's `decimal_comma`, or when it is None, for a file delimited by
        semicolons (or tabs, or pipes: whatever does not clash with a decimal comma):
        True when its number columns, in its first PEEK_RECORDS rows, hold numbers that
        only read with a decimal comma and none that only read with a point; False when
        they hold one that only reads with a point; else None: the style is not known and
        a number such as 1.250 (1250, or 1.25?) is refused. Other files: False."""
        if self.p.decimal_comma is not None:
            return self.p.decimal_comma
        columns = [self.mapping[f] for f in number_fields(self.p.entity_type) if f in self.mapping]
        if table.delimiter not in (";", "\t", "|") or not columns:
            return False
        head = list(itertools.islice(table.rows, PEEK_RECORDS))
        table.rows = itertools.chain(head, table.rows)
        styles = {number_style(value) for _, row in head for c in columns if (value := row.get(c))}
        if "comma" in styles and "point" not in styles:
            table.notes.append(
                "numbers read with a decimal comma (1.250,50), as the file writes them"
                " (decimal_comma: false to refuse them instead)"
            )
            return True
        return False if "point" in styles else None

    def _write_error(self, number: int, row: Row, reason: str) -> None:
        if self._error_writer is None:
            directory = self.files_dir.resolve() / "imports" / "errors"
            directory.mkdir(parents=True, exist_ok=True)
            self.error_path = directory / f"{self.job_id or uuid.uuid4().hex}.csv"
            self._error_file = self.error_path.open("w", encoding="utf-8-sig", newline="")
            self._error_writer = csv.writer(self._error_file)
            self._error_writer.writerow(["row", *self.columns, "error"])
        cells = (printable(row.get(col) or "") for col in self.columns)
        self._error_writer.writerow([number, *cells, printable(reason)])

    def _replay(self, batch: list[tuple[int, Row]]) -> None:
        """A batch committed before a crash: rebuild its errors, write nothing (its keys are
        in the database now)."""
        for number, row in batch:
            self._validate(number, row)

    # -- writing

    def _existing(self, conn: Connection, keys: set[Key]) -> dict[Key, int]:
        table = self.table_def
        found: dict[Key, int] = {}
        for field in self.key_fields:
            wanted = sorted(value for name, value in keys if name == field)
            if not wanted:
                continue
            column = sa.func.lower(table.c[field])
            # Sorted here, not by ORDER BY id: that tempts PostgreSQL into walking the
            # primary key past every row instead of probing the key index.
            query = sa.select(table.c.id, column.label("k")).where(
                table.c.tenant_id == self.p.tenant_id, column.in_(wanted)
            )
            for record in sorted(conn.execute(query), key=lambda r: r.id):
                found.setdefault((field, record.k), record.id)
        return found

    def _run_batch(self, index: int, batch: list[tuple[int, Row]]) -> None:
        valid: list[tuple[int, dict[str, Any], Key | None]] = []
        for number, row in batch:
            values = self._validate(number, row)
            if values is None:
                self.counts["invalid"] += 1
            else:
                valid.append((number, values, row_key(self.key_fields, values)))
        with self.engine.begin() as conn:
            existing = self._existing(conn, {key for _, _, key in valid if key is not None})
            inserts: list[dict[str, Any]] = []
            pending: dict[Key, int] = {}  # key -> index in inserts
            stamp = now()
            for _number, values, key in valid:
                outcome = self._decide(key, existing, pending)
                if outcome == "skip":
                    self.counts["skipped"] += 1
                elif outcome == "update-earlier":
                    self.counts["updated"] += 1
                elif outcome == "pending" and key is not None:
                    given = {k: v for k, v in values.items() if v is not None}
                    inserts[pending[key]].update(given)
                    if self.is_contacts:
                        complete_names(inserts[pending[key]], given)
                    self.counts["updated"] += 1
                elif outcome == "update" and key is not None:
                    self.counts["updated"] += 1
                    if not self.p.dry_run:
                        changes = {k: v for k, v in values.items() if v is not None}
                        if self.is_contacts:
                            changes = contact_update(changes)
                        if self.is_leads:
                            record_stage_change(
                                conn, self.p.tenant_id, existing[key], changes, stamp
                            )
                        conn.execute(
                            self.table_def.update()
                            .where(
                                self.table_def.c.id == existing[key],
                                self.table_def.c.tenant_id == self.p.tenant_id,
                            )
                            .values(**changes, updated_at=stamp)
                        )
                else:
                    self.counts["new"] += 1
                    if key is not None and key not in pending:
                        pending[key] = len(inserts)
                    if self.is_contacts:
                        complete_names(values)
                    inserts.append(
                        {**values, "tenant_id": self.p.tenant_id, "created_at": stamp,
                         "updated_at": stamp}
                    )  # fmt: skip
            if self.p.dry_run:
                return
            after_id = last_lead_id(conn) if self.is_leads and inserts else 0
            self._insert(conn, inserts)
            if self.is_leads and inserts:
                record_new_leads(conn, self.p.tenant_id, after_id, stamp)
            self._save_checkpoint(conn, index)
        self.inserted += len(inserts)
        self._refresh_statistics()

    def _insert(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """SQLite: executemany. PostgreSQL: COPY, in the batch's transaction (psycopg's
        executemany sends a statement per row, and a multi-row INSERT costs more to
        build in SQLAlchemy than to run)."""
        if not rows:
            return
        if self.engine.dialect.name != "postgresql":
            conn.execute(self.table_def.insert(), rows)
            return
        columns = list(dict.fromkeys(name for row in rows for name in row))
        names = ", ".join(f'"{name}"' for name in columns)
        raw = conn.connection.driver_connection
        assert raw is not None
        with (
            raw.cursor() as cursor,
            cursor.copy(f'COPY "{self.table_def.name}" ({names}) FROM STDIN') as copy,
        ):
            for row in rows:
                copy.write_row([row.get(name) for name in columns])

    def _refresh_statistics(self) -> None:
        """ANALYZE the table each time the import has inserted 4x as many rows as at the
        last one (PostgreSQL only). Autovacuum notices a fast-growing table a minute late;
        on stale statistics the planner answers the duplicate lookup by scanning the
        tenant's rows, and each batch gets slower than the one before."""
        if self.inserted < self.analyze_at or self.engine.dialect.name != "postgresql":
            return
        with self.engine.connect() as conn:
            conn.execute(sa.text(f"ANALYZE {self.table_def.name}"))
            conn.commit()
        self.analyze_at = self.inserted * 4

    def _decide(self, key: Key | None, existing: dict[Key, int], pending: dict[Key, int]) -> str:
        mode = self.p.on_duplicate
        if key is None or mode == "create":
            return "new"
        if key in pending:
            return "skip" if mode == "skip" else "pending"
        if key in existing:
            return "skip" if mode == "skip" else "update"
        if self.p.dry_run:
            digest = hash_key(key)
            if digest in self.seen:  # an earlier batch of this file, not written
                return "skip" if mode == "skip" else "update-earlier"
            self.seen.add(digest)
        return "new"


# --------------------------------------------------------------------------- export


def run_export(
    payload: ExportPayload,
    engine: Engine,
    files_dir: Path,
    job_id: str | None,
    progress: Progress = _job_progress,
    max_pdf_cells: int = DEFAULT_MAX_PDF_CELLS,
    contact_statuses: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Export one entity's records to a file under `files_dir/exports/<tenant>/`; returns
    the job result (rows, fields, path, and what the format could not hold as stored:
    see crmqueue.formats.writers.ExportNotes). Fields and filters are checked as at
    enqueue (a payload queued by an older crmqueue may still be wrong: PermanentError)."""
    table = schema.ENTITY_TABLES[payload.entity_type]
    try:
        fields = check_export_fields(payload.entity_type, payload.fields)
        filters = check_export_filters(payload.entity_type, payload.filters, contact_statuses)
    except ExportCheckError as exc:
        raise PermanentError(str(exc)) from None
    conditions = [
        table.c.tenant_id == payload.tenant_id,
        *filter_conditions(table, payload.entity_type, filters),
    ]
    directory = files_dir.resolve() / "exports" / payload.tenant_id
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{payload.entity_type}-{stamp}-{(job_id or uuid.uuid4().hex)[:12]}.{payload.format}"
    final = directory / name
    partial = directory / f".{name}.partial"
    notes = ExportNotes()
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).where(*conditions)).scalar_one()
        query = sa.select(*(table.c[f] for f in fields)).where(*conditions).order_by(table.c.id)
        result = conn.execution_options(yield_per=2000).execute(query)

        def rows() -> Iterator[tuple[Any, ...]]:
            for n, record in enumerate(result, start=1):
                if n % 5000 == 0:
                    progress(min(99.0, 100 * n / max(1, total)))
                yield tuple(record)

        try:
            if payload.format == "csv":
                count = write_csv(partial, fields, rows())
            elif payload.format == "pdf":
                # refused before rendering when `total` x fields is over the limit;
                # progress after each chunk: rendering, not reading, takes the time
                def rendered(n: int) -> None:
                    progress(min(99.0, 100 * n / max(1, total)))

                count = write_pdf(partial, fields, rows(), title=payload.entity_type,
                                  max_cells=max_pdf_cells, expected_rows=total, notes=notes,
                                  rendered=rendered)  # fmt: skip
            else:
                count = write_xlsx(partial, fields, rows(), title=payload.entity_type,
                                   notes=notes)  # fmt: skip
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)
    progress(100)
    return {
        "entity_type": payload.entity_type,
        "format": payload.format,
        "rows": count,
        "fields": fields,
        "path": final.relative_to(files_dir.resolve()).as_posix(),
        "file": str(final),
        **notes.result(),
        "warnings": notes.warnings(payload.format),
    }


# --------------------------------------------------------------------------- telling the user


def _user(engine: Engine, tenant_id: str, user_id: str) -> tuple[str, str] | None:
    """(first name, email) of a CRM user, or None when the tenant has no such user."""
    users = schema.users
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(users.c.name, users.c.email).where(
                users.c.tenant_id == tenant_id, users.c.user_id == user_id
            )
        ).first()
    if found is None:
        return None
    return (found.name.split() or [found.email])[0], found.email


def notify_user(
    engine: Engine,
    tenant_id: str,
    user_id: str,
    template: str,
    context: dict[str, Any],
    job_id: str | None,
) -> dict[str, Any]:
    """Queue the `template` email to the user who started the job; what happened goes
    into the job's result. The import or export itself has succeeded by now, so a
    failure here is reported, not raised: retrying would redo the whole job.

    A retried job (crashed after queueing) would queue a second email; the idempotency
    key derived from the job id lets vendors that deduplicate (Resend) drop it."""
    from crmqueue.tasks import send_email

    user = _user(engine, tenant_id, user_id)
    if user is None:
        log.warning("%s email not sent: tenant %s has no user %s", template, tenant_id, user_id)
        return {"email": None, "reason": f"no user {user_id!r} in tenant {tenant_id!r}"}
    first_name, address = user
    try:
        queued = send_email(
            tenant_id=tenant_id,
            to=address,
            template=template,
            context={"first_name": first_name, **context},
            idempotency_key=f"{template}-{job_id}" if job_id else None,
        )
    except CrmQueueError as exc:
        log.warning("%s email to user %s not queued: %s", template, user_id, exc)
        return {"email": None, "reason": str(exc)}
    return {"email": {"job_id": queued.id, "to": address, "template": template}}


def download_url(settings: Settings, path: str) -> str:
    base = settings.files.download_base_url.rstrip("/")
    if base:
        return f"{base}/{quote(path)}"
    return str(Path(settings.files.dir).resolve() / path)


# --------------------------------------------------------------------------- bodies


def _settings() -> Settings:
    return get_broker().settings


def download_deadline(settings: Settings) -> float:
    """Seconds an import's http(s) source may take to download in all: files.
    download_timeout_seconds, and at most half the import-export queue's time limit (the
    import itself needs the rest), so a server sending a byte at a time cannot hold the
    worker past its limit."""
    limit = settings.queues.get("import-export").timeout_seconds
    return min(settings.files.download_timeout_seconds, limit / 2)


@job("import-export", payload=ImportPayload)
def import_records(payload: ImportPayload) -> dict[str, Any]:
    """Import records into the CRM store (see the module docstring), then email the user
    who started it."""
    settings = _settings()
    engine = get_engine(settings.database.url)
    job_id = current_job_id()
    result = Importer(
        payload, engine, settings.files.dir, job_id, outbound=settings.outbound,
        contact_statuses=settings.crm.contact_statuses,
        download_deadline=download_deadline(settings),
    ).run()  # fmt: skip
    counts = result["counts"]
    context = {
        "entity_type": payload.entity_type, "dry_run": payload.dry_run,
        "created": counts["new"], "updated": counts["updated"],
        "skipped": counts["skipped"], "failed": counts["invalid"],
    }  # fmt: skip
    result["notified"] = notify_user(
        engine, payload.tenant_id, payload.user_id, "import-completed", context, job_id
    )
    result["notification"] = notify_in_app(
        payload.tenant_id, payload.user_id, category="import.completed",
        title="Import checked (dry run)" if payload.dry_run else "Import completed",
        message=f"{payload.entity_type}: {counts['new']} created, {counts['updated']} updated,"
        f" {counts['skipped']} skipped, {counts['invalid']} failed",
    )  # fmt: skip
    return result


@job("import-export", payload=ExportPayload)
def export_records(payload: ExportPayload) -> dict[str, Any]:
    """Export records of one entity to a file under the files directory, then email the
    user who asked for it a link."""
    settings = _settings()
    engine = get_engine(settings.database.url)
    job_id = current_job_id()
    result = run_export(payload, engine, settings.files.dir, job_id,
                        max_pdf_cells=settings.files.max_pdf_cells,
                        contact_statuses=settings.crm.contact_statuses)  # fmt: skip
    result["download_url"] = download_url(settings, result["path"])
    context = {
        "entity_type": payload.entity_type, "download_url": result["download_url"],
        "rows": result["rows"], "format": payload.format,
    }  # fmt: skip
    if result["warnings"]:
        context["warnings"] = result["warnings"]
    result["notified"] = notify_user(
        engine, payload.tenant_id, payload.user_id, "export-ready", context, job_id
    )
    result["notification"] = notify_in_app(
        payload.tenant_id, payload.user_id, category="export.ready", title="Export ready",
        message=f"Your {payload.entity_type} export ({result['rows']} rows,"
        f" {payload.format.upper()}) is ready to download.",
        # A link only where the CRM serves the files (else the URL is a path on disk).
        action_url=result["download_url"] if settings.files.download_base_url else None,
    )  # fmt: skip
    return result
