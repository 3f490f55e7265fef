"""What the API answers with: response models (the OpenAPI schemas) and job views with
secret-looking payload fields masked."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field

from crmqueue.config import QUEUE_NAMES
from crmqueue.jobs import JobInfo

QueueName = Literal["email", "import-export", "report", "webhook", "notification"]
assert QueueName.__args__ == QUEUE_NAMES  # type: ignore[attr-defined]
StateName = Literal["waiting", "scheduled", "active", "delayed", "completed", "dead"]

MASK = "********"
# Issue #15: fields named *key*, *secret*, *token* or password (any case) are masked; and
# the names HTTP gives credentials (RFC 9110 Authorization, RFC 6265 Cookie, "credentials").
_SECRET_NAME = re.compile(
    r"key|secret|token|password|passwd|authori[sz]ation|credential|cookie", re.IGNORECASE
)
MIN_SECRET_CHARS = 4  # shorter secret values are not searched for in free text


def secret_values(value: Any, found: set[str] | None = None) -> set[str]:
    """Every text value (at least MIN_SECRET_CHARS long) under a secret-looking field of
    `value`, at any depth: what `scrubbed` removes from free text such as error messages."""
    found = set() if found is None else found
    if isinstance(value, dict):
        for key, item in value.items():
            if _SECRET_NAME.search(str(key)):
                _texts(item, found)
            else:
                secret_values(item, found)
    elif isinstance(value, list):
        for item in value:
            secret_values(item, found)
    return found


def _texts(value: Any, found: set[str]) -> None:
    if isinstance(value, str):
        if len(value) >= MIN_SECRET_CHARS:
            found.add(value)
            # repr() (a traceback's "{'k': 'v'}") escapes quotes and backslashes.
            found.add(repr(value)[1:-1])
    elif isinstance(value, dict):
        for item in value.values():
            _texts(item, found)
    elif isinstance(value, list):
        for item in value:
            _texts(item, found)


def scrubbed(value: Any, secrets: set[str]) -> Any:
    """`value` with every occurrence of each of `secrets` in its texts replaced by MASK."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in sorted(secrets, key=len, reverse=True):
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {key: scrubbed(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [scrubbed(item, secrets) for item in value]
    return value


def masked(value: Any) -> Any:
    """`value` with every secret-looking field, at any depth, replaced by MASK."""
    if isinstance(value, dict):
        return {
            key: MASK if _SECRET_NAME.search(str(key)) and item is not None else masked(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [masked(item) for item in value]
    return value


class Problem(BaseModel):
    """An error: what went wrong, in one line."""

    detail: str


class FieldProblem(BaseModel):
    field: str
    message: str


class ValidationProblem(BaseModel):
    """422: every bad field, as crmqueue.tasks' PayloadError lists them."""

    detail: str
    errors: list[FieldProblem]


class JobView(BaseModel):
    """One job (crmqueue.jobs.JobInfo); times ISO 8601 UTC; payload and result with
    secret-looking fields masked, and their values masked wherever else they appear
    (errors, tracebacks, result texts)."""

    id: str
    queue: str
    name: str
    tenant: str
    state: str
    progress: int
    attempts: int
    max_attempts: int
    errors: list[dict[str, Any]]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    run_at: str | None
    result: Any = None
    payload: dict[str, Any]

    @classmethod
    def of(cls, info: JobInfo) -> JobView:
        data = info.to_dict()
        # The payload's (and result's) secret values, wherever a job body copied them
        # (error messages, tracebacks, result texts), are masked too.
        secrets = secret_values(data["payload"], secret_values(data["result"]))
        data["payload"] = masked(data["payload"])
        data["result"] = scrubbed(masked(data["result"]), secrets)
        data["errors"] = scrubbed(data["errors"], secrets)
        return cls.model_validate(data)


class JobPage(BaseModel):
    items: list[JobView]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null: last.")


class QueueStats(BaseModel):
    """Per-queue stats, as `crmqueue stats --json` prints them."""

    queue: str
    waiting: int
    active: int
    delayed: int
    scheduled: int
    completed: int
    failed: int
    dead: int
    workers: int
    consumers: int
    throughput_per_min: float
    failure_rate: float
    healthy: bool
    paused: bool
    top_tenants: list[TenantWaiting] | None = Field(
        None, description="With ?top_tenants=true: the tenants with most waiting jobs."
    )


class HealthReport(BaseModel):
    """As `crmqueue health --json` prints it."""

    status: Literal["healthy", "degraded", "error"]
    timestamp: str
    queues: list[QueueStats]
    error: str | None = None
    last_check: str | None = None


class Enqueued(BaseModel):
    id: str
    queue: str


class Replayed(BaseModel):
    queue: str
    replayed: list[str]


class PauseState(BaseModel):
    queue: str
    paused: bool


class EmailTest(BaseModel):
    to: str = Field(description="Recipient address.", max_length=998)


class EmailSent(BaseModel):
    provider: str
    message_id: str | None


class TenantWaiting(BaseModel):
    tenant: str
    waiting: int


class QuotaUse(BaseModel):
    limit: int = Field(description="Jobs a day on this queue.")
    used: int = Field(description="Jobs counted today (the tenant's local day).")
    resets_at: str = Field(description="Next local midnight, ISO 8601 with offset.")


class TenantQueueStats(BaseModel):
    """One tenant's jobs per state on a queue, as `crmqueue stats --tenant T --json`."""

    queue: str
    tenant: str
    waiting: int
    active: int
    delayed: int
    scheduled: int
    completed: int
    failed: int = Field(description="Delayed after a failed attempt (waiting for a retry).")
    dead: int
    quota: QuotaUse | None = None
