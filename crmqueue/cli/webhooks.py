"""``crmqueue webhooks add|list|show|enable|disable|rotate|remove|deliveries|replay``: a
tenant's webhook endpoints and their delivery log (issue #12), through the domain service
:mod:`crmqueue.webhooks` that the delivery bodies use too.

A secret is printed only by ``add`` and ``rotate``, once; ``show``, ``list`` and the log
never print it. Every error is one line on stderr and exit status 1.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text

from crmqueue.cli.common import console, emit_json, group, load_config, open_broker
from crmqueue.errors import CrmQueueError
from crmqueue.json_text import text_problems

if TYPE_CHECKING:
    from crmqueue.webhooks import Delivery, Endpoint, WebhookService

TENANT = click.option("--tenant", required=True, help="The tenant the endpoint belongs to.")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _text(value: str | None, name: str) -> str | None:
    """A lone surrogate (a byte of a non-UTF-8 argument) or NUL, named as its option."""
    if value is not None:
        found = text_problems(value)
        if found:
            raise CrmQueueError(f"{name}: {found[0][1]}")
    return value


@contextlib.contextmanager
def _service(tenant: str) -> Iterator[WebhookService]:
    """The webhook service of this invocation's settings; a CRM database that cannot be
    reached or read becomes one line naming it (its URL without the password)."""
    import sqlalchemy as sa

    from crmqueue.config import mask_url
    from crmqueue.webhooks import service

    _text(tenant, "--tenant")
    settings = load_config()
    try:
        yield service(settings)
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise CrmQueueError(f"CRM database {mask_url(settings.database.url)}: {reason}") from None


def _time(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).isoformat(timespec="seconds")


def _endpoint_dict(endpoint: Endpoint) -> dict[str, Any]:
    """The endpoint as JSON, field by field: its secrets never."""
    return {
        "tenant_id": endpoint.tenant_id,
        "webhook_id": endpoint.webhook_id,
        "url": endpoint.shown_url,  # a password in it masked
        "event_types": list(endpoint.event_types),
        "enabled": endpoint.enabled,
        "description": endpoint.description,
        "disabled_reason": endpoint.disabled_reason,
        "created_at": _time(endpoint.created_at),
        "updated_at": _time(endpoint.updated_at),
        "previous_secret_until": (
            None if endpoint.previous_secret_until is None
            else _time(endpoint.previous_secret_until)
        ),
        "consecutive_failures": endpoint.consecutive_failures,
        "failing_since": None if endpoint.failing_since is None else _time(endpoint.failing_since),
        "probe_at": None if endpoint.probe_at is None else _time(endpoint.probe_at),
    }  # fmt: skip


def _delivery_dict(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "message_id": delivery.message_id,
        "event_type": delivery.event_type,
        "job_id": delivery.job_id,
        "attempt": delivery.attempt,
        "at": _time(delivery.at),
        "succeeded": delivery.succeeded,
        "status_code": delivery.status_code,
        "latency_ms": delivery.latency_ms,
        "response_excerpt": delivery.response_excerpt,
        "error": delivery.error,
    }


def _state(endpoint: Endpoint) -> Text:
    if not endpoint.enabled:
        return Text("disabled", style="red")
    if endpoint.probe_at is not None:
        return Text("breaker open", style="yellow")
    return Text("enabled", style="green")


def _echo(text: str) -> None:
    # URLs, descriptions and response excerpts are the tenant's text: print them in any
    # terminal's encoding rather than fail on one character.
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    click.echo(text.encode(encoding, "backslashreplace").decode(encoding))


@group("webhooks")
def webhooks_group() -> None:
    """A tenant's webhook endpoints (signed per Standard Webhooks) and their delivery log."""


@webhooks_group.command("add")
@click.argument("url")
@TENANT
@click.option(
    "--event",
    "events",
    multiple=True,
    help="An event type to deliver: exact (contact.created), a family (contact.*) or *."
    " Repeat for several; default *.",
)
@click.option("--id", "webhook_id", default=None, help="The endpoint's id (default: generated).")
@click.option("--description", default="", help="What the endpoint is for.")
@AS_JSON
def webhooks_add(
    url: str,
    tenant: str,
    events: tuple[str, ...],
    webhook_id: str | None,
    description: str,
    as_json: bool,
) -> None:
    """Add an endpoint at URL (http or https; checked by the SSRF guard, see [outbound]
    allowed_networks) and print its signing secret, which is shown only this once."""
    for value, name in [(url, "URL"), (webhook_id, "--id"), (description, "--description")]:
        _text(value, name)
    for event in events:
        _text(event, "--event")
    with _service(tenant) as webhooks:
        endpoint, secret = webhooks.add(
            tenant, url, events or ("*",), webhook_id=webhook_id, description=description
        )
    if as_json:
        emit_json({"endpoint": _endpoint_dict(endpoint), "secret": secret})
        return
    _echo(f"webhook {endpoint.webhook_id} added for tenant {tenant}: {endpoint.shown_url}")
    _echo(f"events: {', '.join(endpoint.event_types)}")
    click.echo(f"secret: {secret}")
    click.echo(
        "The secret is shown only this once: store it where the receiver verifies signatures"
        " (`crmqueue webhooks rotate` makes a new one).",
        err=True,
    )


@webhooks_group.command("list")
@TENANT
@AS_JSON
def webhooks_list(tenant: str, as_json: bool) -> None:
    """List the tenant's endpoints (never their secrets)."""
    with _service(tenant) as webhooks:
        endpoints = webhooks.list(tenant)
    if as_json:
        emit_json([_endpoint_dict(endpoint) for endpoint in endpoints])
        return
    table = Table(title=f"webhook endpoints of tenant {tenant}")
    for column in ("id", "url", "events", "state", "failures", "description"):
        table.add_column(column)
    for endpoint in endpoints:
        table.add_row(
            endpoint.webhook_id, endpoint.shown_url, " ".join(endpoint.event_types),
            _state(endpoint), str(endpoint.consecutive_failures), endpoint.description or "-",
        )  # fmt: skip
    console.print(table)


@webhooks_group.command("show")
@click.argument("webhook_id")
@TENANT
@AS_JSON
def webhooks_show(webhook_id: str, tenant: str, as_json: bool) -> None:
    """Show one endpoint: URL, events, state, breaker, rotation (never its secret)."""
    _text(webhook_id, "WEBHOOK_ID")
    with _service(tenant) as webhooks:
        endpoint = webhooks.get(tenant, webhook_id)
    data = _endpoint_dict(endpoint)
    if as_json:
        emit_json(data)
        return
    table = Table(show_header=False, title=f"webhook {endpoint.webhook_id}")
    for key, value in data.items():
        if isinstance(value, list):
            value = " ".join(value)
        table.add_row(key, "-" if value in (None, "") else str(value))
    console.print(table)


@webhooks_group.command("enable")
@click.argument("webhook_id")
@TENANT
def webhooks_enable(webhook_id: str, tenant: str) -> None:
    """Enable an endpoint again; its circuit breaker starts closed."""
    _text(webhook_id, "WEBHOOK_ID")
    with _service(tenant) as webhooks:
        endpoint = webhooks.enable(tenant, webhook_id)
    click.echo(f"webhook {endpoint.webhook_id} enabled")


@webhooks_group.command("disable")
@click.argument("webhook_id")
@TENANT
@click.option("--reason", default="disabled by an operator", show_default=True)
def webhooks_disable(webhook_id: str, tenant: str, reason: str) -> None:
    """Disable an endpoint: no deliveries to it (those queued fail permanently) until it is
    enabled again."""
    _text(webhook_id, "WEBHOOK_ID")
    _text(reason, "--reason")
    with _service(tenant) as webhooks:
        endpoint = webhooks.disable(tenant, webhook_id, reason)
    _echo(f"webhook {endpoint.webhook_id} disabled: {endpoint.disabled_reason or reason}")


@webhooks_group.command("rotate")
@click.argument("webhook_id")
@TENANT
@click.option(
    "--grace-hours",
    type=click.FloatRange(min=0),
    default=None,
    help="Hours the old secret keeps signing beside the new one"
    " (default: webhooks.rotation_grace_hours).",
)
@AS_JSON
def webhooks_rotate(webhook_id: str, tenant: str, grace_hours: float | None, as_json: bool) -> None:
    """Give an endpoint a new secret and print it, once. During the grace period every
    delivery carries two signatures, one per secret, so the receiver can switch at leisure."""
    _text(webhook_id, "WEBHOOK_ID")
    grace = None if grace_hours is None else grace_hours * 3600
    with _service(tenant) as webhooks:
        secret = webhooks.rotate(tenant, webhook_id, grace_seconds=grace)
        endpoint = webhooks.get(tenant, webhook_id)
    until = endpoint.previous_secret_until
    if as_json:
        emit_json({"webhook_id": endpoint.webhook_id, "secret": secret,
                   "previous_secret_until": None if until is None else _time(until)})  # fmt: skip
        return
    click.echo(f"new secret: {secret}")
    if until is None:
        note = "the old secret no longer signs (no grace period)"
    else:
        note = f"the old secret stays valid, signing beside the new one, until {_time(until)}"
    click.echo(f"The new secret is shown only this once; {note}.", err=True)


@webhooks_group.command("remove")
@click.argument("webhook_id")
@TENANT
def webhooks_remove(webhook_id: str, tenant: str) -> None:
    """Remove an endpoint and its delivery log."""
    _text(webhook_id, "WEBHOOK_ID")
    with _service(tenant) as webhooks:
        webhooks.remove(tenant, webhook_id)
    click.echo(f"webhook {webhook_id} removed, with its delivery log")


@webhooks_group.command("deliveries")
@click.argument("webhook_id")
@TENANT
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=50, show_default=True)
@AS_JSON
def webhooks_deliveries(webhook_id: str, tenant: str, limit: int, as_json: bool) -> None:
    """The endpoint's delivery log, newest first: one row per attempt with its status,
    latency and the start of the response (the request's signature is never stored)."""
    _text(webhook_id, "WEBHOOK_ID")
    with _service(tenant) as webhooks:
        webhooks.get(tenant, webhook_id)  # an unknown endpoint is an error, not an empty log
        log = webhooks.deliveries(tenant, webhook_id, limit=limit)
    if as_json:
        emit_json([_delivery_dict(delivery) for delivery in log])
        return
    table = Table(title=f"deliveries to webhook {webhook_id} (newest first)")
    for column in ("id", "at", "message", "event", "attempt", "result", "status", "ms",
                   "response / error"):  # fmt: skip
        table.add_column(column)
    for d in log:
        result = Text("ok", style="green") if d.succeeded else Text("failed", style="red")
        detail = d.error or d.response_excerpt
        table.add_row(
            str(d.id), _time(d.at), d.message_id, d.event_type, str(d.attempt), result,
            "-" if d.status_code is None else str(d.status_code), str(d.latency_ms),
            " ".join(detail.split())[:100] or "-",
        )  # fmt: skip
    console.print(table)


class _DeliveryId(click.ParamType):  # type: ignore[type-arg]
    """A delivery log row's id: the number in the `id` column of `webhooks deliveries`."""

    name = "delivery_id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip()
        if text.isascii() and text.isdigit() and 0 < int(text) < 2**63:
            return int(text)
        self.fail(
            f"{value!r} is not a delivery id: give the number in the id column of"
            " 'crmqueue webhooks deliveries ENDPOINT' (a webhook-id such as msg_... names the"
            " message, not one delivery of it)",
            param,
            ctx,
        )


@webhooks_group.command("replay")
@click.argument("delivery_id", type=_DeliveryId())
@TENANT
def webhooks_replay(delivery_id: int, tenant: str) -> None:
    """Send the message of a logged delivery again, to the same endpoint: same webhook-id,
    event time and data (receivers deduplicate by webhook-id), a fresh signature.
    DELIVERY_ID is the number in the id column of `crmqueue webhooks deliveries`."""
    from crmqueue import tasks

    with _service(tenant) as webhooks:
        delivery = webhooks.delivery(tenant, delivery_id)
        message = webhooks.message(tenant, delivery.message_id)
        endpoint = webhooks.get(tenant, delivery.webhook_id)
    if not endpoint.enabled:
        raise CrmQueueError(
            f"webhook {endpoint.webhook_id} is disabled ({endpoint.disabled_reason}):"
            f" enable it first (crmqueue webhooks enable {endpoint.webhook_id} --tenant {tenant})"
        )
    open_broker()
    job = tasks.deliver_webhook(
        tenant_id=tenant,
        webhook_id=delivery.webhook_id,
        event_type=message.event_type,
        payload=message.data,
        message_id=message.message_id,
        timestamp=message.timestamp,
        replay=True,  # the message may have its delivery job stored: send it all the same
    )
    click.echo(
        f"delivery {delivery_id} replayed as job {job.id}"
        f" (webhook-id {message.message_id}, webhook {delivery.webhook_id})"
    )


COMMANDS = (webhooks_group,)
