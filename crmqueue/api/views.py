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
# Issue #15: fields named *key*, *secret*, *token* or password (any case) are masked.
_SECRET_NAME = re.compile(r"key|secret|token|password|passwd", re.IGNORECASE)


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
    secret-looking fields masked."""

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
        data["payload"] = masked(data["payload"])
        data["result"] = masked(data["result"])
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
