"""What an import may write per entity: the row model that validates a source row (emails,
dates, numbers, enums) and the duplicate key."""

from __future__ import annotations

import datetime as dt
import typing
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

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
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _cleaned(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: _clean(v) for k, v in data.items()}
        return data


class ContactRow(Row):
    email: EmailAddress
    first_name: Short | None = None
    last_name: Short | None = None
    phone: Annotated[str, StringConstraints(max_length=50)] | None = None
    title: Text | None = None
    company: Text | None = None
    city: Short | None = None
    country: Short | None = None
    source: Short | None = None
    external_id: Short | None = None


class CompanyRow(Row):
    name: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    domain: Annotated[str, StringConstraints(to_lower=True, max_length=253)] | None = None
    industry: Short | None = None
    employees: Annotated[int, Field(ge=0)] | None = None
    phone: Annotated[str, StringConstraints(max_length=50)] | None = None
    city: Short | None = None
    country: Short | None = None
    external_id: Short | None = None


class LeadRow(Row):
    external_id: Short | None = None
    title: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    amount: Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2)] | None = None
    currency: (
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$"), AfterValidator(_upper)] | None
    ) = None
    status: Literal["open", "won", "lost"] = "open"
    stage: Short | None = None
    owner: Annotated[str, StringConstraints(max_length=64)] | None = None
    close_date: dt.date | None = None


class ActivityRow(Row):
    external_id: Short | None = None
    type: Literal["call", "email", "meeting", "task", "note"]
    subject: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    notes: str | None = None
    due_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
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


def entity_fields(entity: str) -> list[str]:
    return list(ROW_MODELS[entity].model_fields)


def _is_text(annotation: Any) -> bool:
    if annotation is str:
        return True
    return any(_is_text(arg) for arg in typing.get_args(annotation))


def key_fields(entity: str) -> list[str]:
    """The fields that can serve as a duplicate key: the text fields (compared as
    lower-cased text, as they are stored)."""
    return [
        name
        for name, field in ROW_MODELS[entity].model_fields.items()
        if _is_text(field.annotation)
    ]


def row_key(fields: tuple[str, ...], values: dict[str, Any]) -> tuple[str, str] | None:
    """(key field, normalised value) of a validated row, or None when it has no key."""
    for name in fields:
        value = values.get(name)
        if value:
            return name, str(value).strip().lower()
    return None
