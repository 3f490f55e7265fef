"""Job payload models: the wire contract between producers and workers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from crmqueue.errors import PayloadError

__all__ = [
    "DateRange",
    "EmailPayload",
    "EventPayload",
    "ExportPayload",
    "ImportPayload",
    "NotificationPayload",
    "Payload",
    "ReportPayload",
    "WebhookDeliveryPayload",
    "validate_payload",
]

_CONFIG = ConfigDict(
    alias_generator=to_camel,
    populate_by_name=True,
    validate_by_name=True,
    validate_by_alias=True,
    loc_by_alias=False,
    extra="forbid",
)

_EMAIL_RE = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)

_HEADER_NAME_RE = re.compile(r"[!-9;-~]+")


def _email(value: str) -> str:
    value = value.strip()
    if len(value) > 254 or not _EMAIL_RE.fullmatch(value):
        raise PydanticCustomError("email", "value is not a valid email address")
    return value


def _one_or_many(value: object) -> object:
    return [_email(value)] if isinstance(value, str) else value


def _single_line(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise PydanticCustomError("header_injection", "must not contain CR or LF")
    return value


def _headers(value: dict[str, str]) -> dict[str, str]:
    bad = [
        name
        for name, text in value.items()
        if not _HEADER_NAME_RE.fullmatch(name) or "\r" in text or "\n" in text
    ]
    if bad:
        raise PydanticCustomError(
            "header_injection",
            "header name must be printable ASCII without ':' and value without CR/LF: {names}",
            {"names": ", ".join(map(repr, bad))},
        )
    return value


def _action_url(value: str) -> str:
    parts = urlsplit(value)
    if not any(ch.isspace() or ch == "\\" for ch in value) and (
        (parts.scheme in ("http", "https") and parts.netloc)
        or (value.startswith("/") and not value.startswith("//"))
    ):
        return value
    raise PydanticCustomError("action_url", "must be an http(s) URL or a path starting with '/'")


TenantId = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$"
    ),
]
NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
EmailAddress = Annotated[str, AfterValidator(_email)]
EmailList = Annotated[list[EmailAddress], BeforeValidator(_one_or_many)]
SingleLine = Annotated[str, AfterValidator(_single_line)]
EventType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")]
EntityType = Literal["contacts", "companies", "leads", "activities"]

P = TypeVar("P", bound=BaseModel)


class Payload(BaseModel):
    model_config = _CONFIG

    tenant_id: TenantId


class EmailPayload(Payload):
    to: Annotated[EmailList, Field(min_length=1)]
    subject: SingleLine | None = None
    template: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    context: dict[str, Any] = Field(default_factory=dict)
    cc: EmailList = Field(default_factory=list)
    bcc: EmailList = Field(default_factory=list)
    reply_to: EmailAddress | None = None
    from_: SingleLine | None = Field(default=None, validation_alias=AliasChoices("from", "from_"))
    headers: Annotated[dict[str, str], AfterValidator(_headers)] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    idempotency_key: Annotated[str, StringConstraints(max_length=256)] | None = None


class ImportPayload(Payload):
    user_id: NonEmptyStr
    file_url: NonEmptyStr
    file_type: Literal["csv", "xlsx", "json"]
    entity_type: EntityType
    mapping_config: dict[str, str] = Field(default_factory=dict)
    dry_run: bool = False
    on_duplicate: Literal["skip", "update", "create"] = "skip"
    batch_size: int = Field(default=100, ge=1, le=10_000)
    # Fields that identify a duplicate, first match wins; empty: the entity's default key.
    duplicate_key: list[str] = Field(default_factory=list)

    @field_validator("mapping_config", "duplicate_key")
    @classmethod
    def _known_fields(cls, value: Any, info: ValidationInfo) -> Any:
        entity = info.data.get("entity_type")
        if entity is None:  # entity_type itself failed; that error is reported
            return value
        from crmqueue.crm.entities import entity_fields, key_fields

        fields = (
            entity_fields(entity) if info.field_name == "mapping_config" else key_fields(entity)
        )
        unknown = [name for name in value if name not in fields]
        if unknown:
            raise PydanticCustomError(
                "unknown_field",
                "unknown field(s) {unknown} for {entity} (fields: {fields})",
                {
                    "unknown": ", ".join(map(repr, unknown)),
                    "entity": entity,
                    "fields": ", ".join(fields),
                },
            )
        return value


class ExportPayload(Payload):
    user_id: NonEmptyStr
    entity_type: EntityType
    format: Literal["csv", "xlsx", "pdf"]
    fields: list[str] = Field(default_factory=list)
    filters: dict[str, Any] = Field(default_factory=dict)


class DateRange(BaseModel):
    model_config = _CONFIG

    start_date: date
    end_date: date

    @field_validator("end_date")
    @classmethod
    def _end_not_before_start(cls, value: date, info: ValidationInfo) -> date:
        start = info.data.get("start_date")
        if isinstance(start, date) and value < start:
            raise PydanticCustomError("date_order", "must not be before start_date")
        return value


class ReportPayload(Payload):
    user_id: NonEmptyStr
    report_type: Literal["sales", "pipeline", "contact-growth", "activity"]
    format: Literal["pdf", "xlsx", "html"]
    date_range: DateRange
    filters: dict[str, Any] = Field(default_factory=dict)
    dimensions: list[str] = Field(default_factory=list)


class WebhookDeliveryPayload(Payload):
    webhook_id: NonEmptyStr
    event_type: EventType
    payload: dict[str, Any]


class EventPayload(Payload):
    event_type: EventType
    payload: dict[str, Any]


class NotificationPayload(Payload):
    user_id: NonEmptyStr
    type: Literal["in-app", "email", "push"]
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    message: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
    action_url: Annotated[str, AfterValidator(_action_url)] | None = None


def validate_payload(model: type[P], data: Mapping[str, Any]) -> P:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(
            [(".".join(str(part) for part in err["loc"]), err["msg"]) for err in exc.errors()]
        ) from exc
