"""What an import may write and an export may read per entity: the row model that validates
a source row (emails, dates, numbers, enums), the duplicate key, the exportable fields and
the check of an export's fields and filters (run at enqueue and again in the worker)."""

from __future__ import annotations

import datetime as dt
import functools
import re
import typing
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from crmqueue.fields import EmailAddress
from crmqueue.formats.writers import unescape_cell

Text = Annotated[str, StringConstraints(max_length=300)]
Short = Annotated[str, StringConstraints(max_length=100)]


def _upper(value: str) -> str:
    return value.upper()


def _clean(value: Any) -> Any:
    """Blank is None and surrounding whitespace goes, except in a cell our exports escaped
    against formula injection ('=..., '\t...): that reads back exactly as it was stored."""
    if not isinstance(value, str):
        return value
    text, escaped = unescape_cell(value)
    if not escaped:
        text = text.strip()
    return text if text != "" else None


class Row(BaseModel):
    """A source row as the CRM stores it. Each field's bounds (text length, integer range,
    Decimal digits, dates) are those of its column in crmqueue.crm.schema, so a value a row
    model accepts always fits (tests/test_crm_bounds.py walks every field on SQLite and
    PostgreSQL); what does not fit is refused in its row, naming the column."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _cleaned(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: _clean(v) for k, v in data.items()}
        return data


# --------------------------------------------------------------------------- numbers and dates
#
# A source cell reaches these validators as text (crmqueue.formats.readers) or, in an
# export filter, as a JSON value. The validation context may carry `date_system` (1900 or
# 1904: the workbook's; default 1900, as Excel reads CSV) and `decimal_comma` (True: the
# file writes 1.250,50).

EXCEL_MAX_SERIAL = 2_958_465  # 9999-12-31 in the 1900 date system
_SERIAL_TEXT = re.compile(r"[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][+-]?\d+)?")
_GROUPS = re.compile(r"[ \u00a0\u202f]")  # spaces that group thousands (1 250,50)
_COMMA_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:\.\d{3})+|\d+)(?:,\d+)?")
_POINT_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_ONE_GROUP = re.compile(r"[+-]?\d{1,3}[.,]\d{3}")  # 1.250 / 1,250: grouped, or a fraction?


def _context(info: ValidationInfo, key: str, default: Any) -> Any:
    return (info.context or {}).get(key, default) if info.context else default


def number_style(text: str) -> Literal["comma", "point", "ambiguous", "plain"] | None:
    """How a number is written: "comma" (only readable with a decimal comma: 1250,50,
    1.250,50), "point" (only with a decimal point: 1250.50, 1,250.50), "ambiguous" (one
    group of three digits: 1.250 or 1,250), "plain" (digits alone); None: not a number."""
    text = _GROUPS.sub("", text.strip())
    if not text or text.lstrip("+-").isdigit():
        return "plain" if text.lstrip("+-") else None
    if _ONE_GROUP.fullmatch(text):
        return "ambiguous"
    comma, point = _COMMA_NUMBER.fullmatch(text), _POINT_NUMBER.fullmatch(text)
    if comma and not point:
        return "comma"
    if point and not comma:
        return "point"
    return None


def _decimal_text(value: Any, info: ValidationInfo) -> Any:
    """A number written with a decimal comma, as the Decimal/int validators read it, when
    the context's `decimal_comma` is True; never guessing: one group of three digits
    (1.250, 1,250) is refused as ambiguous, also when `decimal_comma` is None (a file
    whose style is not known). Source: the CLDR number symbols of the locales that write
    a decimal comma (de, fr, es, it, nl, pt-BR, ...) group with '.', space or no-break
    space."""
    mode = _context(info, "decimal_comma", False)
    if not isinstance(value, str) or mode is False:
        return value
    style = number_style(value)
    if style == "ambiguous":
        raise PydanticCustomError(
            "ambiguous_number",
            "{value} is ambiguous with a decimal comma (a thousands group, or a fraction?):"
            " write it without the separator, or with two decimals",
            {"value": repr(value.strip())},
        )
    if mode is None:
        return value
    if style == "comma":
        return _GROUPS.sub("", value.strip()).replace(".", "").replace(",", ".")
    if style == "plain":
        return _GROUPS.sub("", value.strip())
    return value


def _serial(value: Any, info: ValidationInfo) -> dt.datetime | None:
    """A number given for a date or time stamp, read as a spreadsheet date serial (days
    since the epoch of the workbook's date system, the fraction being the time of day);
    None when `value` is not a number. Never a Unix time stamp, as pydantic would read it.

    1900 system (Excel's default; ECMA-376 Part 1, 18.17.4.1): serial 1 is 1900-01-01 and
    serial 60 the 1900-02-29 that Excel counts but that did not exist (refused); from 61
    on, days since 1899-12-30. 1904 system: days since 1904-01-01."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        text = str(value)
    elif isinstance(value, str) and _SERIAL_TEXT.fullmatch(value.strip()):
        text = value.strip()
        if "," in text:
            if not _context(info, "decimal_comma", False):
                return None
            text = text.replace(",", ".")
    else:
        return None
    try:
        days = Decimal(text)
    except ArithmeticError:
        return None
    system = _context(info, "date_system", 1900)
    low = 0 if system == 1904 else 1
    if not days.is_finite() or not low <= days <= EXCEL_MAX_SERIAL:
        raise PydanticCustomError(
            "date_serial",
            "{value} is not a date: a number in a date column is read as a spreadsheet date"
            " serial ({low} to {high}), never as a Unix time stamp",
            {"value": text, "low": low, "high": f"{EXCEL_MAX_SERIAL:,}"},
        )
    if days == days.to_integral_value() and 1000 <= days <= 2999:
        raise PydanticCustomError(
            "date_ambiguous",
            "{value} is ambiguous in a date column (a year, or a spreadsheet date serial in"
            " the early 1900s?): write the full date",
            {"value": text},
        )
    whole = int(days)
    if system == 1904:
        base = dt.datetime(1904, 1, 1)
    elif whole == 60:
        raise PydanticCustomError(
            "date_serial", "serial 60 is 1900-02-29, a day that did not exist", {}
        )
    else:
        base = dt.datetime(1899, 12, 31) if whole < 60 else dt.datetime(1899, 12, 30)
    # Excel keeps times to the millisecond; a float's fraction is rounded to it.
    milliseconds = int(((days - whole) * 86_400_000).to_integral_value())
    try:
        return base + dt.timedelta(days=whole, milliseconds=milliseconds)
    except OverflowError:  # past 9999-12-31 in the 1904 system
        raise PydanticCustomError(
            "date_serial", "{value} is past the last date (9999-12-31)", {"value": text}
        ) from None


def _source_datetime(value: Any, info: ValidationInfo) -> Any:
    stamp = _serial(value, info)
    return value if stamp is None else stamp


def _source_date(value: Any, info: ValidationInfo) -> Any:
    stamp = _serial(value, info)
    if stamp is None:
        return value
    if stamp.time() != dt.time():
        raise PydanticCustomError(
            "date_has_time",
            "{value} is a date serial with a time of day ({time}); this column takes days",
            {"value": str(value).strip(), "time": stamp.time().isoformat()},
        )
    return stamp.date()


def as_utc(value: dt.datetime) -> dt.datetime:
    """`value` as an aware UTC time stamp: an aware one converted, a naive one taken as UTC
    (crmqueue has no per-tenant time zone; a spreadsheet serial or an ISO time without an
    offset is read as UTC). Both CRM databases store UTC (crmqueue.crm.schema.UtcDateTime).
    Raises PydanticCustomError when the instant falls outside years 1-9999 in UTC
    (9999-12-31T23:59:59-05:00 is in year 10000): no database column, Python datetime or
    export format holds it."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise PydanticCustomError(
            "datetime_range",
            "{value} is outside years 1-9999 once converted to UTC",
            {"value": value.isoformat()},
        ) from None


SourceDate = Annotated[dt.date, BeforeValidator(_source_date)]
SourceDateTime = Annotated[dt.datetime, BeforeValidator(_source_datetime), AfterValidator(as_utc)]
SourceDecimal = Annotated[Decimal, BeforeValidator(_decimal_text)]
SourceInt = Annotated[int, BeforeValidator(_decimal_text)]


def number_fields(entity: str) -> list[str]:
    """The fields that take a number (where a decimal comma may be used)."""
    return [
        name
        for name, field in ROW_MODELS[entity].model_fields.items()
        if _holds(field.annotation, (Decimal, int))
    ]


def _holds(annotation: Any, kinds: tuple[type, ...]) -> bool:
    if annotation in kinds:
        return True
    return any(_holds(arg, kinds) for arg in typing.get_args(annotation))


# --------------------------------------------------------------------------- contacts

NAME_CHARS = 200  # contacts.name; first_name and last_name hold 100 each


def contact_statuses() -> tuple[str, ...]:
    """This process's `crm.contact_statuses` (its broker's settings, configured on first
    use like every enqueue does)."""
    from crmqueue.engine.queues import get_broker

    return tuple(get_broker().settings.crm.contact_statuses)


@functools.cache
def _status_lookup(statuses: tuple[str, ...]) -> dict[str, str]:
    return {status.casefold(): status for status in statuses}


def canonical_status(value: str, statuses: Sequence[str]) -> str | None:
    """`value` in the configured spelling (matched case-insensitively), or None when it is
    not a configured status."""
    return _status_lookup(tuple(statuses)).get(value.strip().casefold())


def _contact_status(value: str, info: ValidationInfo) -> str:
    """A status from the validation context's `contact_statuses`, else the configured ones."""
    statuses = (info.context or {}).get("contact_statuses") or contact_statuses()
    canonical = canonical_status(value, statuses)
    if canonical is None:
        raise PydanticCustomError(
            "contact_status",
            "{value} is not a contact status (statuses: {statuses}; crm.contact_statuses)",
            {"value": repr(value), "statuses": ", ".join(statuses)},
        )
    return canonical


ContactStatus = Annotated[str, AfterValidator(_contact_status)]


def split_name(name: str) -> tuple[str | None, str | None]:
    """(first name, last name) of a full name: its first word, and the rest ("Ludwig van
    Beethoven" -> "Ludwig", "van Beethoven"; one word is a first name only). Neither, when
    a part is longer than its column."""
    words = name.split()
    if not words:
        return None, None
    first, last = words[0], " ".join(words[1:]) or None
    if len(first) > 100 or (last is not None and len(last) > 100):
        return None, None
    return first, last


def join_names(first: str | None, last: str | None) -> str | None:
    """The full name of first and last name ("Jane", "Roe" -> "Jane Roe")."""
    full = " ".join(part.strip() for part in (first, last) if part and part.strip())
    return full[:NAME_CHARS] or None


def complete_names(record: dict[str, Any], given: Collection[str] | None = None) -> dict[str, Any]:
    """Keep a contact's `name` and first/last names in step, in place: when a write gives
    `name` but neither first nor last name, they are derived from it (`split_name`); when
    it gives first and/or last name but no `name`, `name` is (`join_names`). What a write
    gives wins; `given` is the fields it gives (default: those of `record` not None).
    Returns `record`."""
    if given is None:
        given = [key for key, value in record.items() if value is not None]
    has_name = "name" in given and record.get("name") is not None
    has_parts = any(key in given for key in ("first_name", "last_name"))
    if has_name and not has_parts:
        record["first_name"], record["last_name"] = split_name(record["name"])
    elif has_parts and not has_name:
        record["name"] = join_names(record.get("first_name"), record.get("last_name"))
    return record


class ContactRow(Row):
    name: Annotated[str, StringConstraints(max_length=NAME_CHARS)] | None = None
    first_name: Short | None = None
    last_name: Short | None = None
    email: EmailAddress
    phone: Annotated[str, StringConstraints(max_length=50)] | None = None
    title: Annotated[str, StringConstraints(max_length=200)] | None = None
    company: Text | None = None
    city: Short | None = None
    country: Short | None = None
    source: Short | None = None
    status: ContactStatus | None = None
    external_id: Short | None = None


class CompanyRow(Row):
    name: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    domain: Annotated[str, StringConstraints(to_lower=True, max_length=253)] | None = None
    industry: Short | None = None
    # An INTEGER column: 32 bits on PostgreSQL, so a larger count is refused in its row.
    employees: Annotated[SourceInt, Field(ge=0, le=2**31 - 1)] | None = None
    phone: Annotated[str, StringConstraints(max_length=50)] | None = None
    city: Short | None = None
    country: Short | None = None
    external_id: Short | None = None


class LeadRow(Row):
    external_id: Short | None = None
    title: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    amount: Annotated[SourceDecimal, Field(ge=0, max_digits=14, decimal_places=2)] | None = None
    currency: (
        Annotated[
            str, StringConstraints(max_length=3, pattern=r"^[A-Za-z]{3}$"), AfterValidator(_upper)
        ]
        | None
    ) = None
    status: Literal["open", "won", "lost"] = "open"
    stage: Annotated[str, StringConstraints(max_length=50)] | None = None
    owner: Annotated[str, StringConstraints(max_length=64)] | None = None
    close_date: SourceDate | None = None


class ActivityRow(Row):
    external_id: Short | None = None
    type: Literal["call", "email", "meeting", "task", "note"]
    subject: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    notes: str | None = None
    due_at: SourceDateTime | None = None
    completed_at: SourceDateTime | None = None
    owner: Annotated[str, StringConstraints(max_length=64)] | None = None


ROW_MODELS: dict[str, type[Row]] = {
    "contacts": ContactRow,
    "companies": CompanyRow,
    "leads": LeadRow,
    "activities": ActivityRow,
}

# The default duplicate key per entity: the columns compared case-insensitively, first
# match wins (companies: domain, else name). An import may name its own (`duplicate_key`).
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "contacts": ("email",),
    "companies": ("domain", "name"),
    "leads": ("external_id",),
    "activities": ("external_id",),
}


def caseless_fields(entity: str) -> tuple[str, ...]:
    """The fields an export filter compares ignoring case, as duplicate detection does:
    the default duplicate key (KEY_FIELDS). An email address's case carries no meaning in
    practice (RFC 5321 leaves the local part's to the receiving host; none of the vendors
    or mailbox providers treats it as significant), so `JOHN.DOE@example.com` finds
    `john.doe@example.com`."""
    return KEY_FIELDS[entity]


@functools.cache
def entity_fields(entity: str) -> tuple[str, ...]:
    """The fields an import may write (a mapping's targets)."""
    return tuple(ROW_MODELS[entity].model_fields)


def _is_text(annotation: Any) -> bool:
    if annotation is str:
        return True
    return any(_is_text(arg) for arg in typing.get_args(annotation))


@functools.cache
def key_fields(entity: str) -> tuple[str, ...]:
    """The fields that can serve as a duplicate key: the text fields (compared as
    lower-cased text, as they are stored)."""
    return tuple(
        name
        for name, field in ROW_MODELS[entity].model_fields.items()
        if _is_text(field.annotation)
    )


def row_key(fields: tuple[str, ...], values: dict[str, Any]) -> tuple[str, str] | None:
    """(key field, normalised value) of a validated row, or None when it has no key."""
    for name in fields:
        value = values.get(name)
        if value:
            return name, str(value).strip().lower()
    return None


# --------------------------------------------------------------------------- exports

# What an export reads besides the importable fields: the record's id, its links to other
# records and its time stamps. With ROW_MODELS, the CRM schema's columns (a test checks
# that the two agree).
_STAMPS: dict[str, Any] = {"created_at": SourceDateTime, "updated_at": SourceDateTime}
SYSTEM_FIELDS: dict[str, dict[str, Any]] = {
    "contacts": {"id": int, "company_id": int, **_STAMPS},
    "companies": {"id": int, **_STAMPS},
    "leads": {"id": int, "contact_id": int, "company_id": int, **_STAMPS},
    "activities": {"id": int, "contact_id": int, "lead_id": int, **_STAMPS},
}


@functools.cache
def export_fields(entity: str) -> tuple[str, ...]:
    """Every field an export of `entity` may name, in the order of an export that names
    none: the id, the importable fields, then links and time stamps."""
    system = SYSTEM_FIELDS[entity]
    return ("id", *ROW_MODELS[entity].model_fields, *(f for f in system if f != "id"))


@functools.cache
def _filter_adapter(entity: str, field: str) -> TypeAdapter[Any]:
    """The validator of one filter value: the field's type and constraints as an import
    checks them (a status from the list, a date, an email address, ...); for a time stamp,
    also a day (`_day_or_instant`)."""
    info = ROW_MODELS[entity].model_fields.get(field)
    if info is None:
        annotation: Any = SYSTEM_FIELDS[entity][field]
    else:
        annotation = (
            Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        )
    if annotation is SourceDateTime or _holds(annotation, (dt.datetime,)):
        return TypeAdapter(Annotated[Any, PlainValidator(_day_or_instant(TypeAdapter(annotation)))])
    return TypeAdapter(annotation)


_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _day_or_instant(
    instant: TypeAdapter[Any],
) -> Callable[[Any, ValidationInfo], dt.date | dt.datetime | None]:
    """A time stamp filter's value: a day (an ISO date, "2026-11-30", or a whole
    spreadsheet date serial, 46356) as a `date`, which matches the whole day in UTC
    (crmqueue.crm.store.filter_conditions), else an instant as the field reads it (UTC)."""

    def validate(value: Any, info: ValidationInfo) -> dt.date | dt.datetime | None:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if isinstance(value, str) and _ISO_DAY.fullmatch(value.strip()):
            try:
                return dt.date.fromisoformat(value.strip())
            except ValueError:
                raise PydanticCustomError(
                    "date_from_datetime_parsing", "{value} is not a date", {"value": value}
                ) from None
        stamp: dt.datetime | None = instant.validate_python(value, context=info.context)
        whole = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.strip().isdigit()
        )
        return stamp.date() if whole and stamp is not None else stamp

    return validate


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _storable(text: str) -> bool:
    """Whether the CRM database can hold `text`: PostgreSQL refuses NUL, and UTF-8 a lone
    surrogate."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ExportCheckError(ValueError):
    """An export names a field the entity lacks, or a filter value its field cannot hold."""


# --------------------------------------------------------------------------- field names
#
# A payload names a field in the CRM's snake_case or in the original system's camelCase
# (first_name / firstName, as DESIGN §3 gives payload keys). The payload validators store
# the snake_case name, so the stored payload, the worker and an export's header all use
# one spelling whichever the producer wrote.


@functools.cache
def _spellings(entity: str) -> dict[str, str]:
    lookup: dict[str, str] = {}
    for name in export_fields(entity):
        lookup[name] = name
        lookup.setdefault(to_camel(name), name)
    return lookup


def canonical_field(entity: str, name: str) -> str | None:
    """The snake_case name of a field of `entity` (any that an export may name) given in
    either spelling ("firstName" or "first_name" -> "first_name"); None when `entity` has
    no such field. Exact spellings only: "FirstName" or "first-name" are not field names
    (an import's header row is matched more loosely: crmqueue.workers.import_export)."""
    return _spellings(entity).get(name)


# What a header cell loses before it is compared with the fields' names, also loosened so:
# case, white space, '.', '-' and '_'. "First Name", "first-name", "FirstName" and
# "FIRST_NAME" are first_name; "E-Mail" and "EMAIL" are email; "E-Mail Address" is no
# field (no guessing beyond this).
_HEADER_NOISE = re.compile(r"[\s._-]+")


def header_key(header: str) -> str:
    """`header` as an import's header row is matched against field names."""
    return _HEADER_NOISE.sub("", header).casefold()


@functools.cache
def _header_fields(entity: str) -> dict[str, str]:
    return {header_key(name): name for name in entity_fields(entity)}


def header_field(entity: str, header: str) -> str | None:
    """The importable field of `entity` that a header cell names (header_key: case, white
    space, '.', '-' and '_' ignored), or None."""
    return _header_fields(entity).get(header_key(header))


class FieldNameError(ExportCheckError):
    """Names that are no field of the entity (`unknown`, as given; `fields` the valid
    names), or several names of one field (`repeated`: each field's spellings given)."""

    def __init__(
        self,
        entity: str,
        fields: Sequence[str],
        unknown: Sequence[str] = (),
        repeated: Sequence[Sequence[str]] = (),
    ) -> None:
        self.entity, self.fields = entity, list(fields)
        self.unknown, self.repeated = list(unknown), [list(names) for names in repeated]
        if self.unknown:
            message = (
                f"unknown {entity} field(s) {', '.join(map(repr, self.unknown))}"
                f" (fields: {', '.join(self.fields)})"
            )
        else:
            message = "; ".join(
                f"field {canonical_field(entity, names[0])!r} listed twice"
                + (f" (as {', '.join(map(repr, names))})" if len(set(names)) > 1 else "")
                for names in self.repeated
            )
        super().__init__(message)


def canonical_fields(
    entity: str, names: Iterable[str], allowed: Sequence[str] | None = None
) -> list[str]:
    """The snake_case names of `names` (each in either spelling: canonical_field), in their
    order. Raises FieldNameError for a name that is not one of `allowed` (default: every
    field an export may name), listing those, and for a field named twice."""
    lookup = _spellings(entity)
    given = list(names)
    canonical: list[str] = []
    unknown: list[str] = []
    for name in given:
        field = lookup.get(name)
        if field is None or (allowed is not None and field not in allowed):
            unknown.append(name)
        else:
            canonical.append(field)
    if unknown:
        raise FieldNameError(entity, export_fields(entity) if allowed is None else allowed, unknown)
    if len(set(canonical)) != len(canonical):
        groups: dict[str, list[str]] = {}
        for name, field in zip(given, canonical, strict=True):
            groups.setdefault(field, []).append(name)
        repeated = [spelt for spelt in groups.values() if len(spelt) > 1]
        raise FieldNameError(entity, allowed or export_fields(entity), repeated=repeated)
    return canonical


def check_export_fields(entity: str, fields: Sequence[str]) -> list[str]:
    """The fields of an export in snake_case (all of `export_fields` when none are named);
    raises FieldNameError (an ExportCheckError) for an unknown or repeated field."""
    return canonical_fields(entity, fields) or list(export_fields(entity))


def check_export_filters(
    entity: str,
    filters: Mapping[str, Any],
    contact_statuses: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Each filter's value(s) as its field holds them (str -> date, int, Decimal; a status in
    its configured spelling; a time stamp in UTC, or a `date` for a day). A filter is
    `field: value` (equal), `field: [values]` (any of them) or `field: null` (empty); the
    caseless_fields match ignoring case, and a day given for a time stamp matches that
    whole day in UTC. Raises ExportCheckError naming the field."""
    fields = canonical_fields(entity, filters)
    context = {"contact_statuses": contact_statuses} if contact_statuses else None
    checked: dict[str, Any] = {}
    problems: list[str] = []
    for field, (given, value) in zip(fields, filters.items(), strict=True):
        name = given  # problems name the filter as the caller wrote it
        adapter = _filter_adapter(entity, field)
        values = value if isinstance(value, list) else [value]
        if value is None:
            checked[field] = None
            continue
        typed = []
        for index, item in enumerate(values):
            where = f"{name}[{index}]" if isinstance(value, list) else name
            if item is None or isinstance(item, dict | list):
                problems.append(f"{where}: a filter is a value, a list of values or null")
                continue
            if isinstance(item, str) and not _storable(item):
                problems.append(
                    f"{where}: NUL characters and lone surrogates are not text the CRM holds"
                )
                continue
            try:
                checked_value = adapter.validate_python(item, context=context)
            except ValidationError as exc:
                problems.append(f"{where}: {exc.errors()[0]['msg']}")
                continue
            # the CRM's INTEGER columns are 32-bit (PostgreSQL refuses a larger operand)
            if type(checked_value) is int and not INT32_MIN <= checked_value <= INT32_MAX:
                problems.append(f"{where}: out of range for the field (a 32-bit integer)")
                continue
            typed.append(checked_value)
        checked[field] = typed if isinstance(value, list) else (typed[0] if typed else None)
    if problems:
        raise ExportCheckError("; ".join(problems))
    return checked
