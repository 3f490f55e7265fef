"""Job payload models: the wire contract between producers and workers."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError, PydanticSerializationError

from crmqueue import email_rules
from crmqueue.errors import PayloadError
from crmqueue.fields import Mailbox, MailboxList, SingleLine, check_single_line
from crmqueue.json_text import (
    depth_problems,
    encode_value,
    may_be_too_deep,
    problems,
    suspect_dump,
    text_problems,
)
from crmqueue.tenancy import TENANT_ID, TENANT_ID_RULE, user_id_problem
from crmqueue.url_rules import IPNetwork, source_problem

__all__ = [
    "RELATIVE_RANGES",
    "DateRange",
    "EmailPayload",
    "EventPayload",
    "ExportPayload",
    "ImportPayload",
    "NotificationPayload",
    "Payload",
    "ReportPayload",
    "WebhookDeliveryPayload",
    "payload_json",
    "relative_range",
    "validate_payload",
]

_CONFIG = ConfigDict(
    alias_generator=to_camel,
    populate_by_name=True,
    validate_by_name=True,
    validate_by_alias=True,
    loc_by_alias=False,
    extra="forbid",
    # NaN and Infinity are not JSON: written as constants, payload_json finds and refuses
    # them (the default writes null, silently).
    ser_json_inf_nan="constants",
)

# A header name: printable ASCII without ':' (RFC 5322 ftext), short enough that
# "Name: " leaves room on a 78-character line for the folded value.
_HEADER_NAME_RE = re.compile(r"[!-9;-~]{1,70}")
MAX_HEADER_VALUE = 2000


def _headers(value: dict[str, str]) -> dict[str, str]:
    bad = [name for name in value if not _HEADER_NAME_RE.fullmatch(name)]
    if bad:
        raise PydanticCustomError(
            "header_name",
            "header name must be 1-70 printable ASCII characters without ':': {names}",
            {"names": ", ".join(map(repr, bad))},
        )
    reserved = [name for name in value if email_rules.is_reserved_header(name)]
    if reserved:
        raise PydanticCustomError(
            "header_reserved",
            "headers may not set {names}: the message builds them itself",
            {"names": ", ".join(map(repr, reserved))},
        )
    for name, text in value.items():
        if len(text) > MAX_HEADER_VALUE:
            raise PydanticCustomError(
                "header_value",
                "header {name}: longer than {limit} characters",
                {"name": repr(name), "limit": MAX_HEADER_VALUE},
            )
        try:
            check_single_line(text)
        except PydanticCustomError as exc:
            raise PydanticCustomError(
                "header_injection",
                "header {name}: {reason}",
                {"name": repr(name), "reason": exc.message()},
            ) from None
    return value


def _subject(value: str) -> str:
    check_single_line(value)
    if not value.strip():
        raise PydanticCustomError("blank", "must not be blank (leave it out for the template's)")
    return value


def _tag(value: str) -> str:
    if not email_rules.TAG_RE.fullmatch(value):
        raise PydanticCustomError(
            "tag",
            "a tag is 1-128 of A-Z a-z 0-9 _ - (what every email vendor accepts): {value}",
            {"value": repr(value)},
        )
    return value


def action_url_problem(value: str) -> str | None:
    """Why `value` is not a notification's action URL, or None: an http(s) URL without
    user info, or a path starting with '/' (the CRM app's own; an email joins it to
    ``notifications.app_base_url``). User info is refused because a reader takes
    ``https://crm.example.com@evil.com/`` for the CRM while it opens evil.com."""
    try:
        parts = urlsplit(value)
        has_userinfo = "@" in parts.netloc
        parts.port  # noqa: B018 - a bad port raises ValueError here
    except ValueError:
        return "must be an http(s) URL or a path starting with '/'"
    if has_userinfo:
        return "must not hold user info (user@ or user:password@ before the host)"
    if not any(ch.isspace() or ch == "\\" for ch in value) and (
        (parts.scheme in ("http", "https") and parts.hostname)
        or (value.startswith("/") and not value.startswith("//"))
    ):
        return None
    return "must be an http(s) URL or a path starting with '/'"


def _action_url(value: str) -> str:
    problem = action_url_problem(value)
    if problem is not None:
        raise PydanticCustomError("action_url", problem)
    return value


def _tenant_id(value: str) -> str:
    if TENANT_ID.match(value) is None:
        raise PydanticCustomError("tenant_id", TENANT_ID_RULE)
    return value


TenantId = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(_tenant_id)]


def _user_id(value: str) -> str:
    problem = user_id_problem(value)
    if problem is not None:
        raise PydanticCustomError("user_id", problem)
    return value


# crmqueue.tenancy's user id rule (as `users add` and crmqueue.notifications apply it).
UserId = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(_user_id)]
NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Tag = Annotated[str, AfterValidator(_tag)]
# Resend's Idempotency-Key takes at most 256 characters.
IdempotencyKey = Annotated[SingleLine, StringConstraints(min_length=1, max_length=256)]
# At most 100 characters: the width of event_type in the webhook log and messages
# (crmqueue.crm.schema) and of an endpoint's filters (crmqueue.webhooks.MAX_EVENT_TYPE).
_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


def _event_type(value: str) -> str:
    if len(value) > 100 or not _EVENT_TYPE.fullmatch(value):
        raise PydanticCustomError(
            "event_type",
            "must be a lower-case dotted event type such as contact.created (letters, digits"
            " and _ between the dots; at most 100 characters)",
        )
    return value


EventType = Annotated[str, AfterValidator(_event_type)]
EntityType = Literal["contacts", "companies", "leads", "activities"]

P = TypeVar("P", bound=BaseModel)


class Payload(BaseModel):
    """Every job payload: a tenant, and (checked by validate_payload and again when the
    job is stored) only text and values every store and vendor can take."""

    model_config = _CONFIG

    tenant_id: TenantId


class EmailPayload(Payload):
    """An email job. Every address field takes ``local@domain`` or ``Name <local@domain>``
    with an internationalised domain (sent as IDNA A-labels) but an ASCII local part;
    every text that becomes a header is one line. `context` must hold the template's
    required variables (either spelling: ``first_name`` or ``firstName``); tags and
    headers follow what every vendor accepts (crmqueue.email_rules). An idempotency key
    that a vendor could not carry as a header is sent hashed."""

    to: Annotated[MailboxList, Field(min_length=1)]
    subject: Annotated[str, AfterValidator(_subject)] | None = None
    template: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    context: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    cc: MailboxList = Field(default_factory=list)
    bcc: MailboxList = Field(default_factory=list, validate_default=True)
    reply_to: Mailbox | None = None
    from_: Mailbox | None = Field(default=None, validation_alias=AliasChoices("from", "from_"))
    headers: Annotated[dict[str, str], AfterValidator(_headers)] = Field(default_factory=dict)
    tags: list[Tag] = Field(default_factory=list)
    idempotency_key: IdempotencyKey | None = None

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str, info: ValidationInfo) -> str:
        """A built-in template, or one registered for the tenant (reported on `template`,
        so `context` is checked only against a template that exists). The declaration
        found is kept for `_template_variables`, next in this validation."""
        tenant = info.data.get("tenant_id")
        if tenant is not None:
            files_dir = str((info.context or {}).get("files_dir") or _email_settings()[0])
            try:
                declaration = email_rules.declaration_for(files_dir, tenant, value)
                _looked_up.found = (files_dir, tenant, value, declaration)
            except email_rules.UnknownTemplate:
                raise PydanticCustomError(
                    "unknown_template",
                    "template {template} is neither built in nor registered for tenant {tenant}",
                    {"template": repr(value), "tenant": repr(tenant)},
                ) from None
        return value

    @field_validator("context")
    @classmethod
    def _template_variables(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The template's required variables are there (its declaration: the built-ins'
        manifest, or the one recorded when the tenant registered it). The files directory
        comes from the validation context's `files_dir`, else the configured one."""
        template, tenant = info.data.get("template"), info.data.get("tenant_id")
        found, _looked_up.found = _looked_up.found, None
        if template is None or tenant is None:  # that error is reported already
            return value
        files_dir = str((info.context or {}).get("files_dir") or _email_settings()[0])
        if found is not None and found[:3] == (files_dir, tenant, template):
            declaration = found[3]  # _known_template's look-up, a moment ago
        else:
            try:
                declaration = email_rules.declaration_for(files_dir, tenant, template)
            except email_rules.UnknownTemplate:  # reported on `template`
                return value
        missing = email_rules.missing_variables(declaration, value) if declaration else []
        if missing:
            raise PydanticCustomError(
                "missing_variable",
                "template {template} needs {names}",
                {
                    "template": repr(template),
                    "names": email_rules.describe(missing),
                },
            )
        wrong = email_rules.type_problems(declaration, value) if declaration else []
        if wrong:
            raise PydanticCustomError(
                "variable_type",
                "template {template}: {problems}",
                {"template": repr(template), "problems": "; ".join(wrong)},
            )
        return value

    @field_validator("bcc")
    @classmethod
    def _recipient_count(cls, value: list[str], info: ValidationInfo) -> list[str]:
        """to, cc and bcc together within what the configured provider takes (checked on
        bcc, the last of the three; validated even when not given)."""
        count = len(info.data.get("to", ())) + len(info.data.get("cc", ())) + len(value)
        if count <= email_rules.FEWEST_RECIPIENTS:  # what every provider takes: no look-up
            return value
        provider = _email_settings()[1]
        limit = email_rules.recipient_limit(provider)
        if count > limit:
            raise PydanticCustomError(
                "too_many_recipients",
                "to, cc and bcc together have {count} recipients; at most {limit} "
                "(email provider {provider})",
                {"count": count, "limit": limit, "provider": provider},
            )
        return value

    @field_validator("tags")
    @classmethod
    def _tag_count(cls, value: list[str]) -> list[str]:
        """At most 10 tags, and no more than the configured provider takes."""
        if len(value) <= email_rules.FEWEST_TAGS:  # what every provider takes: no look-up
            return value
        provider = _email_settings()[1]
        limit = email_rules.tag_limit(provider)
        if len(value) > limit:
            raise PydanticCustomError(
                "too_many_tags",
                "at most {limit} tags (email provider {provider})",
                {"limit": limit, "provider": provider},
            )
        return value


class _LookedUp(threading.local):
    """The template declaration EmailPayload._known_template found last in this thread:
    (files_dir, tenant_id, template, declaration), or None. _template_variables takes it
    (validated right after) instead of looking the template up a second time."""

    found: tuple[str, str, str, email_rules.Declaration | None] | None = None


_looked_up = _LookedUp()

_settings_seen: list[Any] = [None, ("", ""), None]


def _email_settings() -> tuple[str, str]:
    """(files.dir, email.provider) of this process's settings: its broker's, configured
    on first use like an enqueue. Kept while the broker's settings stay the same object:
    this runs for every email enqueued."""
    seen = _settings_seen
    if seen[2] is None:
        from crmqueue.engine.queues import get_broker

        seen[2] = get_broker
    settings = seen[2]().settings
    if seen[0] is not settings:
        seen[:2] = [settings, (str(settings.files.dir), settings.email.provider)]
    result: tuple[str, str] = seen[1]
    return result


_source_seen: list[Any] = [None, ("", ())]


def _source_settings() -> tuple[str, tuple[IPNetwork, ...]]:
    """(files.dir, outbound allowed networks) of this process's settings, kept while the
    broker's settings stay the same object (as `_email_settings`)."""
    from crmqueue.engine.queues import get_broker

    settings = get_broker().settings
    seen = _source_seen
    if seen[0] is not settings:
        seen[:] = [settings, (str(settings.files.dir), settings.outbound.networks())]
    result: tuple[str, tuple[IPNetwork, ...]] = seen[1]
    return result


class ImportPayload(Payload):
    user_id: UserId
    file_url: NonEmptyStr
    # Delimited text (csv, tsv, txt), spreadsheets (xlsx, xls, ods) or json (an array or
    # JSON Lines): crmqueue.formats.readers.FILE_TYPES.
    file_type: Literal["csv", "tsv", "txt", "xlsx", "xls", "ods", "json"]
    entity_type: EntityType
    mapping_config: dict[str, str] = Field(default_factory=dict)
    dry_run: bool = False
    on_duplicate: Literal["skip", "update", "create"] = "skip"
    batch_size: int = Field(default=100, ge=1, le=10_000)
    # Fields that identify a duplicate, first match wins; empty: the entity's default key.
    duplicate_key: list[str] = Field(default_factory=list)
    # Numbers written 1.250,50: True/False, or None to detect it (files delimited by
    # semicolons, tabs or pipes whose number columns only read that way).
    decimal_comma: bool | None = None

    @field_validator("file_url")
    @classmethod
    def _readable_source(cls, value: str, info: ValidationInfo) -> str:
        """What the worker would refuse on every attempt, as far as the text tells
        (crmqueue.url_rules.source_problem): a scheme other than file or http(s), a path
        outside the files directory, an address literal the outbound guard refuses. The
        files directory and allowed networks come from the validation context's
        `files_dir` and `allowed_networks`, else the configured ones."""
        context = info.context or {}
        files_dir, networks = _source_settings()
        problem = source_problem(
            value,
            str(context.get("files_dir") or files_dir),
            context.get("allowed_networks", networks),
        )
        if problem:
            raise PydanticCustomError("import_source", "{reason}", {"reason": problem})
        return value

    @field_validator("mapping_config", "duplicate_key")
    @classmethod
    def _known_fields(cls, value: Any, info: ValidationInfo) -> Any:
        """Field names in either spelling (first_name, firstName), kept in snake_case."""
        entity = info.data.get("entity_type")
        if entity is None:  # entity_type itself failed; that error is reported
            return value
        from crmqueue.crm.entities import (
            FieldNameError,
            canonical_fields,
            entity_fields,
            key_fields,
        )

        mapping = info.field_name == "mapping_config"
        try:
            names = canonical_fields(
                entity, value, entity_fields(entity) if mapping else key_fields(entity)
            )
        except FieldNameError as exc:
            if not exc.unknown:
                reason = {"reason": str(exc)}
                raise PydanticCustomError("repeated_field", "{reason}", reason) from None
            raise PydanticCustomError(
                "unknown_field",
                "unknown field(s) {unknown} for {entity} (fields: {fields})",
                {
                    "unknown": ", ".join(map(repr, exc.unknown)),
                    "entity": entity,
                    "fields": ", ".join(exc.fields),
                },
            ) from None
        if isinstance(value, dict):
            return dict(zip(names, value.values(), strict=True))
        return names


class ExportPayload(Payload):
    user_id: UserId
    entity_type: EntityType
    format: Literal["csv", "xlsx", "pdf"]
    fields: list[str] = Field(default_factory=list)
    # field -> value (equal), [values] (any of them) or null (empty); values are checked
    # against the field's type and stored as JSON (a status in its configured spelling).
    filters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("fields", "filters")
    @classmethod
    def _known_fields(cls, value: Any, info: ValidationInfo) -> Any:
        """The same check as the worker's (crmqueue.crm.entities), without the database.
        Contact statuses come from the validation context, else the configured ones."""
        entity = info.data.get("entity_type")
        if entity is None:  # entity_type itself failed; that error is reported
            return value
        from pydantic_core import to_jsonable_python

        from crmqueue.crm import entities

        try:
            if info.field_name == "fields":  # in snake_case; none named stays none
                return entities.canonical_fields(entity, value)
            statuses = (info.context or {}).get("contact_statuses")
            return to_jsonable_python(entities.check_export_filters(entity, value, statuses))
        except entities.ExportCheckError as exc:
            raise PydanticCustomError("export_field", "{reason}", {"reason": str(exc)}) from None


# The start of ISO text for a day (a time of day after it is checked by pydantic).
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?![0-9])")


class DateRange(BaseModel):
    model_config = _CONFIG

    start_date: date
    end_date: date

    @field_validator("start_date", "end_date", mode="wrap")
    @classmethod
    def _calendar_day(cls, value: Any, handler: Any) -> date:
        """A day (YYYY-MM-DD), in the report's time zone: a time of day is refused with a
        reason that says so (pydantic's own text speaks of datetimes' zero time). Only ISO
        text or a date object: pydantic would read a number ("0", 2592000) as epoch seconds."""
        if not (isinstance(value, date) or (isinstance(value, str) and _ISO_DAY.match(value))):
            raise PydanticCustomError(
                "date_type",
                "a calendar day as text (YYYY-MM-DD), got {value}",
                {"value": repr(value)},
            )
        try:
            return cast(date, handler(value))
        except ValidationError as exc:
            if any(e["type"] == "date_from_datetime_inexact" for e in exc.errors()):
                raise PydanticCustomError(
                    "date_with_time",
                    "a calendar day (YYYY-MM-DD) without a time of day, got {value}",
                    {"value": str(value)},
                ) from None
            raise

    @field_validator("end_date")
    @classmethod
    def _end_not_before_start(cls, value: date, info: ValidationInfo) -> date:
        start = info.data.get("start_date")
        if isinstance(start, date) and value < start:
            raise PydanticCustomError("date_order", "must not be before start_date")
        return value


# A report's date_range named relative to a day, as a recurring schedule gives it
# (crmqueue.schedules): resolved at each occurrence, in the schedule's time zone, into
# the concrete start_date/end_date the job carries. A job itself never holds the name.
RELATIVE_RANGES = ("last_7_days", "previous_month", "month_to_date")


def relative_range(name: str, today: date) -> dict[str, str]:
    """The concrete range `name` (one of RELATIVE_RANGES) means on the day `today`:
    ``last_7_days`` the seven whole days before it (today - 7 .. today - 1),
    ``previous_month`` the calendar month before its month, ``month_to_date`` its month's
    first day through `today` itself. Returns {"start_date", "end_date"} as YYYY-MM-DD.
    Raises ValueError for another name."""
    if name == "last_7_days":
        start, end = today - timedelta(days=7), today - timedelta(days=1)
    elif name == "previous_month":
        end = today.replace(day=1) - timedelta(days=1)
        start = end.replace(day=1)
    elif name == "month_to_date":
        start, end = today.replace(day=1), today
    else:
        raise ValueError(f"{name!r} is not one of {', '.join(RELATIVE_RANGES)}")
    return {"start_date": start.isoformat(), "end_date": end.isoformat()}


def _report_settings() -> tuple[int, tuple[str, ...], tuple[str, ...]]:
    """(reports.max_range_days, crm.contact_statuses, the stages of
    reports.stage_probabilities) of this process's settings."""
    from crmqueue.engine.queues import get_broker

    settings = get_broker().settings
    return (
        settings.reports.max_range_days,
        tuple(settings.crm.contact_statuses),
        tuple(settings.reports.probabilities()),
    )


def _nested_errors(errors: list[tuple[str | int, str]], value: Any) -> ValidationError:
    """One error per (key or index, reason), reported under the field being validated
    (``filters.minAmount``, ``dimensions.1``)."""
    return ValidationError.from_exception_data(
        "report",
        [
            InitErrorDetails(
                type=PydanticCustomError("report_option", "{reason}", {"reason": reason}),
                loc=(where,),
                input=value,
            )
            for where, reason in errors
        ],
    )


def _time_zone(value: str) -> str:
    from crmqueue.config import check_time_zone

    try:
        return check_time_zone(value)
    except ValueError as exc:
        raise PydanticCustomError("time_zone", "{reason}", {"reason": str(exc)}) from None


# The days a report's date range may cover (see ReportPayload._range_length).
REPORT_DATES = (date(1900, 1, 1), date(9998, 12, 31))


class ReportPayload(Payload):
    """A report job (issue #13). `filters` and `dimensions` are checked against the report
    type (crmqueue.reports.options) and kept as given (the report's cover shows them so);
    the date range may span at most `reports.max_range_days` days. `time_zone` (IANA)
    overrides the tenant's (reports.tenant_time_zones, else reports.time_zone); left
    out of the job's JSON when not given. Validation context: `max_range_days`,
    `contact_statuses`, `stages` (a stage filter's vocabulary), else the configured ones."""

    user_id: UserId
    report_type: Literal["sales", "pipeline", "contact-growth", "activity"]
    format: Literal["pdf", "xlsx", "html"]
    date_range: DateRange
    filters: dict[str, Any] = Field(default_factory=dict)
    dimensions: list[str] = Field(default_factory=list)
    time_zone: Annotated[str, AfterValidator(_time_zone)] | None = Field(
        default=None, exclude_if=lambda value: value is None
    )

    @field_validator("report_type", "format", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        """Case-insensitive ("PDF", "Sales"), stored in lower case."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("dimensions", mode="before")
    @classmethod
    def _lower_dimensions(cls, value: Any) -> Any:
        """Dimensions are case-insensitive ("Month"), stored in lower case."""
        if isinstance(value, list):
            return [item.strip().lower() if isinstance(item, str) else item for item in value]
        return value

    @field_validator("date_range")
    @classmethod
    def _range_length(cls, value: DateRange, info: ValidationInfo) -> DateRange:
        # A report cuts periods in a zone up to UTC±14 h, starting weeks, quarters and years
        # before the range and a day after it: beyond these years that arithmetic leaves
        # what Python's dates (years 1..9999) and SQLite's can hold.
        first, last = REPORT_DATES
        if value.start_date < first or value.end_date > last:
            raise PydanticCustomError(
                "date_out_of_range",
                "report dates run from {first} to {last}",
                {"first": first.isoformat(), "last": last.isoformat()},
            )
        limit = (info.context or {}).get("max_range_days") or _report_settings()[0]
        days = (value.end_date - value.start_date).days + 1
        if days > limit:
            raise PydanticCustomError(
                "range_too_long",
                "spans {days} days; at most {limit} (reports.max_range_days)",
                {"days": days, "limit": limit},
            )
        return value

    @field_validator("filters")
    @classmethod
    def _known_filters(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        report_type = info.data.get("report_type")
        if report_type is None or not value:  # a bad type is reported on report_type
            return value
        from crmqueue.reports.options import check_filters

        statuses = (info.context or {}).get("contact_statuses")
        if report_type == "contact-growth" and not statuses:
            statuses = _report_settings()[1]
        stages = (info.context or {}).get("stages")
        if "stage" in value and not stages:
            stages = _report_settings()[2]
        _, errors = check_filters(report_type, value, statuses or (), stages or ())
        if errors:
            raise _nested_errors(list(errors), value)
        return value

    @field_validator("dimensions")
    @classmethod
    def _known_dimensions(cls, value: list[str], info: ValidationInfo) -> list[str]:
        report_type = info.data.get("report_type")
        if report_type is None or not value:
            return value
        from crmqueue.reports.options import check_dimensions

        _, errors = check_dimensions(report_type, value)
        if errors:
            raise _nested_errors(list(errors), value)
        return value


# An endpoint's id, as crmqueue.webhooks.WEBHOOK_ID (64: webhook_id's column width).
WebhookId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"),
]
# A webhook message id (the `webhook-id` header): header-safe, at most 64 characters.
MessageId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]


class WebhookDeliveryPayload(Payload):
    """One event to one endpoint. `message_id` and `timestamp` (the event's time, in the
    body) are set by publish_event and replay so that every attempt and replay sends the
    same id and body; absent, the body uses ``msg_<job id>`` and the time the job was
    enqueued. The payload's JSON must fit ``webhooks.max_payload_bytes`` (checked by
    crmqueue.tasks at enqueue)."""

    webhook_id: WebhookId
    event_type: EventType
    payload: dict[str, Any]
    message_id: MessageId | None = None
    timestamp: datetime | None = None


class EventPayload(Payload):
    """One event for every subscribed endpoint of the tenant. `message_id` (else
    ``msg_<job id>``) and `timestamp` (else the time the job was enqueued) are what every
    delivery of it sends."""

    event_type: EventType
    payload: dict[str, Any]
    message_id: MessageId | None = None
    timestamp: datetime | None = None


Channel = Literal["in-app", "email", "push", "sms"]


class NotificationPayload(Payload):
    """A notification for one user. Its channels: `channels`, else the original's `type`
    (one channel), else none named and the user's preferences for `category` decide
    (crmqueue.notifications.plan_channels). Giving both, `type` must be among `channels`."""

    user_id: UserId
    type: Channel | None = None
    channels: Annotated[list[Channel], Field(min_length=1)] | None = None
    category: Annotated[
        str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$", max_length=100)
    ] = "general"
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    message: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
    action_url: Annotated[str, AfterValidator(_action_url)] | None = None

    @field_validator("channels")
    @classmethod
    def _type_among_channels(cls, value: list[str] | None, info: ValidationInfo) -> Any:
        if value is None:
            return value
        kind = info.data.get("type")
        if kind is not None and kind not in value:
            raise PydanticCustomError(
                "type_not_in_channels",
                "type {kind} is not among channels (give one of them, or both agreeing)",
                {"kind": repr(kind)},
            )
        return list(dict.fromkeys(value))  # each channel once, in the order given

    def requested(self) -> list[str] | None:
        """The channels the producer named, or None to let the preferences decide."""
        if self.channels is not None:
            return list(self.channels)
        return [self.type] if self.type is not None else None


def validate_payload(model: type[P], data: Mapping[str, Any]) -> P:
    """`data` as a `model`. Raises PayloadError listing every bad field: the model's errors
    and any text no attempt could use (crmqueue.json_text: a lone surrogate or NUL in any
    string or key, named by its path as given). The text is checked on the input because
    a model's JSON dump turns a lone surrogate in a dict key into U+FFFD without a word."""
    text = text_problems(data)
    try:
        valid = model.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(_with_model_errors(text, exc)) from exc
    if text:
        raise PayloadError(text)
    return valid


def payload_json(model: type[P], data: Mapping[str, Any]) -> tuple[P, bytes]:
    """`data` as a `model`, and the model as compact UTF-8 JSON for a job message: what
    validate_payload accepts and refuses, at the cost of one validation and one dump in
    Rust. The JSON is looked at instead of the input: a lone surrogate fails the dump, NUL
    and NaN show as ``\\u0000`` and ``NaN`` (a payload's config writes NaN as a constant
    for this), a dict key's lone surrogate as U+FFFD; only then is the input walked to
    name the fields (a real U+FFFD or "NaN" in a text costs that walk, nothing more)."""
    try:
        valid: P = model.__pydantic_validator__.validate_python(data)  # model_validate's core
    except ValidationError as exc:
        raise PayloadError(_with_model_errors(text_problems(data), exc)) from exc
    try:
        encoded: bytes = valid.__pydantic_serializer__.to_json(valid)
    except PydanticSerializationError:
        encoded = b""  # a lone surrogate in a text: named below
    except ValueError:  # pydantic-core's own depth limit (a few hundred levels)
        raise PayloadError(depth_problems(data) or [("payload", "nested too deeply")]) from None
    if may_be_too_deep(encoded):
        deep = depth_problems(data)
        if deep:
            raise PayloadError(deep)
    if not encoded or suspect_dump(encoded):
        errors = text_problems(data) or problems(valid.model_dump(mode="json"))
        if errors:
            raise PayloadError(errors)
        if not encoded:  # a high-low pair given as two code points: JSON escapes join them
            encoded = encode_value(valid.model_dump(mode="json"))
    return valid, encoded


def _with_model_errors(text: list[tuple[str, str]], exc: ValidationError) -> list[tuple[str, str]]:
    errors = [(".".join(str(part) for part in err["loc"]), err) for err in exc.errors()]
    if text:  # the model's complaints about the same text: told once, by `text`
        told = {path for path, _ in text}
        errors = [e for e in errors if e[0] not in told and e[1]["type"] != "string_unicode"]
    return text + [(path, err["msg"]) for path, err in errors]
