"""``crmqueue push keys|public-key|subscribe|unsubscribe|subscriptions``: web push (issue
#14). `keys` prints a new VAPID key pair; the others manage a user's subscriptions
(crmqueue.push)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.table import Table

from crmqueue.cli.common import console, emit_json, group, load_config

_TENANT = click.option("--tenant", required=True, help="Tenant id.")
_USER = click.option("--user", "user_id", required=True, help="The user's id in the tenant.")
_AS_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _engine() -> tuple[Any, Any]:
    from crmqueue.crm.store import get_engine

    settings = load_config()
    return settings, get_engine(settings.database.url)


@group("push")
def push_group() -> None:
    """Web push: VAPID keys and a user's push subscriptions."""


@push_group.command("keys")
@click.option("--pem", is_flag=True, help="Print the private key as PEM (default: base64url).")
@_AS_JSON
def push_keys(pem: bool, as_json: bool) -> None:
    """Print a new VAPID key pair. The public key (base64url) is the browser's
    applicationServerKey and push.vapid_public_key; keep the private key secret: give it
    in CRMQUEUE_PUSH__VAPID_PRIVATE_KEY or a file named by push.vapid_private_key_file,
    never in the config file."""
    from crmqueue.push import generate_vapid_keys

    keys = generate_vapid_keys()
    private = keys.private_pem() if pem else keys.private_b64()
    if as_json:
        emit_json({"public_key": keys.public_key, "private_key": private})
        return
    click.echo(f"CRMQUEUE_PUSH__VAPID_PUBLIC_KEY={keys.public_key}")
    if pem:
        click.echo("# private key (PEM): save it to a file for push.vapid_private_key_file")
        click.echo(private, nl=False)
    else:
        click.echo(f"CRMQUEUE_PUSH__VAPID_PRIVATE_KEY={private}")


@push_group.command("public-key")
def push_public_key() -> None:
    """Print the configured application server key (for the browser's subscribe call)."""
    from crmqueue.errors import CrmQueueError
    from crmqueue.push import application_server_key

    key = application_server_key(load_config())
    if key is None:
        raise CrmQueueError(
            "no VAPID key configured: set push.vapid_public_key or a private key"
            " (crmqueue push keys)"
        )
    click.echo(key)


@push_group.command("subscribe")
@_TENANT
@_USER
@click.option(
    "--subscription",
    "subscription_json",
    default=None,
    help='The browser\'s PushSubscription JSON: {"endpoint": ..., "keys": {"p256dh": ...,'
    ' "auth": ...}} (or - to read it from stdin).',
)
@click.option("--endpoint", default=None, help="The push service URL (without --subscription).")
@click.option("--p256dh", default=None, help="The browser's P-256 key, base64url.")
@click.option("--auth", default=None, help="The browser's auth secret, base64url.")
@click.option("--user-agent", default=None, help="The browser or device, for the listing.")
@_AS_JSON
def push_subscribe(
    tenant: str,
    user_id: str,
    subscription_json: str | None,
    endpoint: str | None,
    p256dh: str | None,
    auth: str | None,
    user_agent: str | None,
    as_json: bool,
) -> None:
    """Add a push subscription of the user (or refresh the one with that endpoint)."""
    from crmqueue import push

    settings, engine = _engine()
    if subscription_json is not None:
        if endpoint or p256dh or auth:
            raise click.UsageError("give --subscription or --endpoint/--p256dh/--auth, not both")
        text = sys.stdin.read() if subscription_json == "-" else subscription_json
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON ({exc})", param_hint="--subscription") from None
        found = push.subscribe_json(tenant, user_id, data, user_agent=user_agent, engine=engine,
                                    settings=settings)  # fmt: skip
    else:
        if not (endpoint and p256dh and auth):
            raise click.UsageError("give --subscription JSON, or --endpoint, --p256dh and --auth")
        found = push.subscribe(tenant, user_id, endpoint, p256dh, auth, user_agent=user_agent,
                               engine=engine, settings=settings)  # fmt: skip
    if as_json:
        emit_json(found.to_dict())
        return
    click.echo(f"subscription {found.id} of {user_id} ({tenant}) at {found.host}")


@push_group.command("unsubscribe")
@_TENANT
@_USER
@click.argument("endpoint", metavar="ENDPOINT|ID")
def push_unsubscribe(tenant: str, user_id: str, endpoint: str) -> None:
    """Remove the user's subscription with ENDPOINT (its URL), or the ID that
    `push subscriptions` lists."""
    from crmqueue import push
    from crmqueue.errors import CrmQueueError

    settings, engine = _engine()
    if endpoint.isascii() and endpoint.isdigit():
        mine = push.subscriptions(tenant, user_id, engine=engine, settings=settings)
        endpoint = next((item.endpoint for item in mine if str(item.id) == endpoint), endpoint)
    if not push.unsubscribe(tenant, user_id, endpoint, engine=engine, settings=settings):
        raise CrmQueueError(f"user {user_id!r} of tenant {tenant!r} has no such subscription")
    click.echo("removed")


@push_group.command("subscriptions")
@_TENANT
@_USER
@_AS_JSON
def push_subscriptions(tenant: str, user_id: str, as_json: bool) -> None:
    """The user's push subscriptions."""
    from crmqueue import push

    settings, engine = _engine()
    found = push.subscriptions(tenant, user_id, engine=engine, settings=settings)
    if as_json:
        emit_json([item.to_dict() for item in found])
        return
    table = Table(title=f"push subscriptions of {user_id} ({tenant})")
    for column in ("id", "push service", "user agent", "since (UTC)", "last sent", "last status"):
        table.add_column(column)
    for item in found:
        table.add_row(
            str(item.id), item.host, (item.user_agent or "")[:40],
            item.created_at.strftime("%Y-%m-%d %H:%M"),
            item.last_sent_at.strftime("%Y-%m-%d %H:%M") if item.last_sent_at else "-",
            str(item.last_status or "-"),
        )  # fmt: skip
    console.print(table)


COMMANDS = (push_group,)
