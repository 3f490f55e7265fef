"""``crmqueue notifications list|read|prefs``: a user's in-app inbox and preferences."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from crmqueue.cli.common import console, emit_json, group, load_config


class _AsciiIntRange(click.IntRange):
    """click.IntRange of ASCII digits only: int() also reads "٣٠" (Arabic-Indic) as 30."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip().lstrip("+-").isascii():
            self.fail(f"{value!r} is not a whole number in ASCII digits", param, ctx)
        return super().convert(value, param, ctx)


_TENANT = click.option("--tenant", required=True, help="Tenant id.")
_USER = click.option("--user", "user_id", required=True, help="The user's id in the tenant.")


def _engine() -> tuple[Any, Any]:
    from crmqueue.crm.store import get_engine

    settings = load_config()
    return settings, get_engine(settings.database.url)


@group("notifications")
def notifications_group() -> None:
    """A user's in-app notifications and notification preferences."""


@notifications_group.command("list")
@_TENANT
@_USER
@click.option("--unread", is_flag=True, help="Only unread notifications.")
@click.option("--limit", type=_AsciiIntRange(1, 200), default=20, show_default=True)
@click.option("--cursor", default=None, help="The next page's cursor, as a page printed it.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def notifications_list(
    tenant: str, user_id: str, unread: bool, limit: int, cursor: str | None, as_json: bool
) -> None:
    """The user's notifications, newest first, with the unread count."""
    from crmqueue import notifications

    _settings, engine = _engine()
    page = notifications.list_notifications(
        tenant, user_id, unread_only=unread, limit=limit, cursor=cursor, engine=engine
    )
    count = notifications.unread_count(tenant, user_id, engine=engine)
    if as_json:
        emit_json(
            {"items": [n.to_dict() for n in page.items], "next_cursor": page.next_cursor,
             "unread": count}
        )  # fmt: skip
        return
    table = Table(title=f"notifications of {user_id} ({tenant})")
    for column in ("id", "created (UTC)", "category", "title", "message", "read"):
        table.add_column(column)
    for item in page.items:
        table.add_row(
            str(item.id), item.created_at.strftime("%Y-%m-%d %H:%M"), item.category,
            item.title, item.message[:80], "yes" if item.read else "no",
        )  # fmt: skip
    console.print(table)
    more = f"; next page: --cursor {page.next_cursor}" if page.next_cursor else ""
    click.echo(f"{count} unread{more}")


@notifications_group.command("read")
@_TENANT
@_USER
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Mark every unread notification read.")
def notifications_read(tenant: str, user_id: str, ids: tuple[str, ...], all_: bool) -> None:
    """Mark notifications read: the IDS given, or --all."""
    from crmqueue import notifications
    from crmqueue.errors import CrmQueueError

    if bool(ids) == all_:
        raise click.UsageError("give notification IDS or --all")
    bad = [text for text in ids if not (text.isascii() and text.isdigit())]
    if bad:
        raise CrmQueueError(f"{', '.join(map(repr, bad))} is not a notification id (a number)")
    _settings, engine = _engine()
    if all_:
        marked = notifications.mark_all_read(tenant, user_id, engine=engine)
        click.echo(f"marked {marked} notification(s) read")
        return
    missing = [
        n for n in map(int, ids) if not notifications.mark_read(tenant, user_id, n, engine=engine)
    ]
    if missing:
        raise CrmQueueError(
            f"user {user_id!r} of tenant {tenant!r} has no notification"
            f" {', '.join(map(str, missing))}"
        )
    click.echo(f"marked {len(ids)} notification(s) read")


@notifications_group.command("prefs")
@_TENANT
@_USER
@click.option("--set", "set_", multiple=True, metavar="CATEGORY=CH+CH",
              help="The user's channels for a category (* for all; empty: none).")  # fmt: skip
@click.option("--unset", multiple=True, metavar="CATEGORY", help="Back to the tenant defaults.")
@click.option("--quiet", default=None, metavar="HH:MM-HH:MM", help="Quiet hours, local time.")
@click.option("--no-quiet", is_flag=True, help="Remove the quiet hours.")
@click.option("--time-zone", default=None, help="The user's IANA time zone (Europe/Berlin).")
@click.option("--category", "categories", multiple=True, help="Also show these categories.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def notifications_prefs(
    tenant: str, user_id: str, set_: tuple[str, ...], unset: tuple[str, ...],
    quiet: str | None, no_quiet: bool, time_zone: str | None, categories: tuple[str, ...],
    as_json: bool,
) -> None:  # fmt: skip
    """Show the user's notification preferences; change them with the options."""
    from crmqueue import notifications
    from crmqueue.errors import CrmQueueError

    settings, engine = _engine()
    for item in set_:
        category, sep, names = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not CATEGORY=CH+CH", param_hint="--set")
        channels = [name.strip() for name in names.split("+") if name.strip()]
        notifications.set_preferences(tenant, user_id, category.strip(), channels, engine=engine)
    for category in unset:
        notifications.set_preferences(tenant, user_id, category, None, engine=engine)
    if quiet is not None and no_quiet:
        raise click.UsageError("give --quiet or --no-quiet, not both")
    if quiet is not None or no_quiet or time_zone is not None:
        start = end = None
        if quiet is not None:
            start, sep, end = quiet.partition("-")
            if not sep:
                raise click.BadParameter(f"{quiet!r} is not HH:MM-HH:MM", param_hint="--quiet")
        elif not no_quiet:  # only the zone: keep the hours
            kept = notifications.get_preferences(tenant, user_id, engine=engine).quiet_hours
            start, end = kept or (None, None)
        notifications.set_quiet_hours(
            tenant, user_id, start, end, time_zone=time_zone, engine=engine
        )
    prefs = notifications.get_preferences(tenant, user_id, engine=engine)
    if not prefs.known:  # as --set and --quiet refuse: preferences belong to a user
        raise CrmQueueError(f"tenant {tenant!r} has no user {prefs.user_id!r} (crmqueue users add)")
    data = prefs.to_dict(settings, categories)
    if as_json:
        emit_json(data)
        return
    table = Table(title=f"notification preferences of {prefs.user_id} ({tenant})")
    for column in ("category", "channels", "from"):
        table.add_column(column)
    for category, entry in data["effective"].items():
        table.add_row(category, ", ".join(entry["channels"]) or "(none)", entry["source"])
    console.print(table)
    hours = "-".join(data["quiet_hours"]) if data["quiet_hours"] else "none"
    click.echo(f"quiet hours: {hours} ({data['time_zone'] or 'UTC'})")


def print_result(result: dict[str, Any]) -> None:
    """A completed notification job's result as ``crmqueue enqueue notification --wait``
    prints it: the outcome, then one line per channel (``sms: skipped: SMS is not
    configured ...``, ``email: queued, job <id>``, ``push: held until <time>``)."""
    click.echo(f"notification {result.get('status', '?')} ({result.get('category', '-')})")
    for key in ("reason", "warning"):
        if result.get(key):
            click.echo(f"  {key}: {result[key]}")
    for channel, outcome in (result.get("channels") or {}).items():
        parts = [str(outcome.get("status", "?"))]
        if outcome.get("id") is not None:
            parts.append(f"id {outcome['id']}")
        if outcome.get("until"):
            parts.append(f"until {outcome['until']}")
        if outcome.get("job_id"):
            parts.append(f"job {outcome['job_id']}")
        line = f"  {channel}: {', '.join(parts)}"
        for key in ("reason", "note"):
            if outcome.get(key):
                line += f": {outcome[key]}"
        click.echo(line)


COMMANDS = (notifications_group,)
