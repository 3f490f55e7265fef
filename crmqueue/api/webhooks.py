"""``/api/v1/webhooks``: a tenant's webhook endpoints (crmqueue.webhooks): add, list,
show, change, enable/disable, rotate the secret, remove, the delivery log, replay."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel, Field

from crmqueue.api.deps import Caller, State, tenant_for
from crmqueue.webhooks import Delivery, Endpoint, WebhookService, service

router = APIRouter(tags=["webhooks"])

WebhookId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
TenantQuery = Annotated[
    str | None,
    Query(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Admin token: the tenant. Others: omit."),
]


class EndpointView(BaseModel):
    """An endpoint; its secrets never (a password in its URL masked)."""

    tenant_id: str
    webhook_id: str
    url: str
    event_types: list[str]
    enabled: bool
    description: str
    disabled_reason: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    previous_secret_until: dt.datetime | None
    consecutive_failures: int
    failing_since: dt.datetime | None
    probe_at: dt.datetime | None

    @classmethod
    def of(cls, e: Endpoint) -> EndpointView:
        return cls(
            tenant_id=e.tenant_id, webhook_id=e.webhook_id, url=e.shown_url,
            event_types=list(e.event_types), enabled=e.enabled, description=e.description,
            disabled_reason=e.disabled_reason, created_at=e.created_at,
            updated_at=e.updated_at, previous_secret_until=e.previous_secret_until,
            consecutive_failures=e.consecutive_failures, failing_since=e.failing_since,
            probe_at=e.probe_at,
        )  # fmt: skip


class NewEndpoint(BaseModel):
    url: str = Field(max_length=2048)
    event_types: list[str] = Field(default_factory=lambda: ["*"], max_length=100)
    webhook_id: str | None = Field(default=None, max_length=64)
    description: str = Field(default="", max_length=1000)


class AddedEndpoint(BaseModel):
    endpoint: EndpointView
    secret: str = Field(description="The signing secret, shown only this once.")


class EndpointChange(BaseModel):
    url: str | None = Field(default=None, max_length=2048)
    event_types: list[str] | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=1000)
    enabled: bool | None = None


class Rotation(BaseModel):
    grace_seconds: float | None = Field(default=None, ge=0, le=366 * 86400.0)


class Rotated(BaseModel):
    webhook_id: str
    secret: str = Field(description="The new secret, shown only this once.")
    previous_secret_until: dt.datetime | None


class DeliveryView(BaseModel):
    id: int
    webhook_id: str
    message_id: str
    event_type: str
    job_id: str | None
    attempt: int
    at: dt.datetime
    succeeded: bool
    status_code: int | None
    latency_ms: int
    response_excerpt: str
    error: str | None

    @classmethod
    def of(cls, d: Delivery) -> DeliveryView:
        data: dict[str, Any] = {name: getattr(d, name) for name in cls.model_fields}
        return cls.model_validate(data)


class ReplayedDelivery(BaseModel):
    delivery_id: int
    job_id: str
    message_id: str
    webhook_id: str


def _service(app: Any) -> WebhookService:
    return service(app.settings)


@router.get("/api/v1/webhooks", response_model=list[EndpointView])
def list_endpoints(role: Caller, app: State, tenant_id: TenantQuery = None) -> list[EndpointView]:
    tenant = tenant_for(role, tenant_id)
    return [EndpointView.of(e) for e in _service(app).list(tenant)]


@router.post("/api/v1/webhooks", response_model=AddedEndpoint, status_code=201)
def add_endpoint(
    body: NewEndpoint, role: Caller, app: State, tenant_id: TenantQuery = None
) -> AddedEndpoint:
    """Add an enabled endpoint; the URL passes the outbound guard (no private addresses
    unless [outbound] allowed_networks lets them in). The secret is shown only here."""
    tenant = tenant_for(role, tenant_id)
    endpoint, secret = _service(app).add(
        tenant, body.url, body.event_types, webhook_id=body.webhook_id,
        description=body.description,
    )  # fmt: skip
    return AddedEndpoint(endpoint=EndpointView.of(endpoint), secret=secret)


@router.get("/api/v1/webhooks/{webhook_id}", response_model=EndpointView)
def get_endpoint(
    webhook_id: WebhookId, role: Caller, app: State, tenant_id: TenantQuery = None
) -> EndpointView:
    return EndpointView.of(_service(app).get(tenant_for(role, tenant_id), webhook_id))


@router.patch("/api/v1/webhooks/{webhook_id}", response_model=EndpointView)
def change_endpoint(
    webhook_id: WebhookId,
    body: EndpointChange,
    role: Caller,
    app: State,
    tenant_id: TenantQuery = None,
) -> EndpointView:
    """Change the URL, event types or description; `enabled` enables (resetting the
    breaker) or disables the endpoint."""
    tenant = tenant_for(role, tenant_id)
    webhooks = _service(app)
    endpoint = webhooks.update(
        tenant, webhook_id, url=body.url, event_types=body.event_types,
        description=body.description,
    )  # fmt: skip
    if body.enabled is True:
        endpoint = webhooks.enable(tenant, webhook_id)
    elif body.enabled is False:
        endpoint = webhooks.disable(tenant, webhook_id, "disabled through the admin API")
    return EndpointView.of(endpoint)


@router.delete("/api/v1/webhooks/{webhook_id}", status_code=204, response_class=Response)
def remove_endpoint(
    webhook_id: WebhookId, role: Caller, app: State, tenant_id: TenantQuery = None
) -> Response:
    """Remove the endpoint and its delivery log."""
    _service(app).remove(tenant_for(role, tenant_id), webhook_id)
    return Response(status_code=204)


@router.post("/api/v1/webhooks/{webhook_id}/rotate", response_model=Rotated)
def rotate_secret(
    webhook_id: WebhookId,
    role: Caller,
    app: State,
    body: Rotation | None = None,
    tenant_id: TenantQuery = None,
) -> Rotated:
    """A new secret, shown once; the old one keeps signing beside it for `grace_seconds`
    (default [webhooks] rotation_grace_hours)."""
    tenant = tenant_for(role, tenant_id)
    webhooks = _service(app)
    secret = webhooks.rotate(tenant, webhook_id, grace_seconds=body.grace_seconds if body else None)
    endpoint = webhooks.get(tenant, webhook_id)
    return Rotated(
        webhook_id=webhook_id, secret=secret, previous_secret_until=endpoint.previous_secret_until
    )


@router.get("/api/v1/webhooks/{webhook_id}/deliveries", response_model=list[DeliveryView])
def deliveries(
    webhook_id: WebhookId,
    role: Caller,
    app: State,
    tenant_id: TenantQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[DeliveryView]:
    """The endpoint's delivery log, newest first (one row per attempt)."""
    tenant = tenant_for(role, tenant_id)
    webhooks = _service(app)
    webhooks.get(tenant, webhook_id)
    return [DeliveryView.of(d) for d in webhooks.deliveries(tenant, webhook_id, limit=limit)]


@router.post(
    "/api/v1/webhooks/deliveries/{delivery_id}/replay",
    response_model=ReplayedDelivery,
    status_code=202,
    responses={409: {"model": dict, "description": "the endpoint is disabled"}},
)
def replay_delivery(
    delivery_id: Annotated[int, Path(ge=1, lt=2**63)],
    role: Caller,
    app: State,
    tenant_id: TenantQuery = None,
) -> ReplayedDelivery:
    """Send a logged delivery's message again to the same endpoint: same webhook-id,
    event time and data, a fresh signature (as `crmqueue webhooks replay`)."""
    from crmqueue import tasks

    tenant = tenant_for(role, tenant_id)
    webhooks = _service(app)
    delivery = webhooks.delivery(tenant, delivery_id)
    message = webhooks.message(tenant, delivery.message_id)
    endpoint = webhooks.get(tenant, delivery.webhook_id)
    if not endpoint.enabled:
        raise HTTPException(
            409, f"webhook {endpoint.webhook_id} is disabled ({endpoint.disabled_reason})"
        )
    job = tasks.deliver_webhook(
        tenant_id=tenant, webhook_id=delivery.webhook_id, event_type=message.event_type,
        payload=message.data, message_id=message.message_id, timestamp=message.timestamp,
    )  # fmt: skip
    return ReplayedDelivery(
        delivery_id=delivery_id, job_id=job.id, message_id=message.message_id,
        webhook_id=delivery.webhook_id,
    )  # fmt: skip
