"""``crmqueue api``: serve the admin HTTP API alone; ``crmqueue api token create``."""

from __future__ import annotations

import click

from crmqueue.cli.common import configure_logging, group, load_config


@group(invoke_without_command=True)
@click.option("--host", default=None, help="Address to listen on (default [api] host).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Default [api] port.")
@click.option("--watch-fd", type=int, default=None, hidden=True)
@click.pass_context
def api(ctx: click.Context, host: str | None, port: int | None, watch_fd: int | None) -> None:
    """Serve the admin HTTP API, /metrics and /healthz (for a host that only watches;
    `crmqueue run` serves it beside its consumers)."""
    if ctx.invoked_subcommand is not None:
        return
    from crmqueue.api.server import serve
    from crmqueue.workers.loading import load_bodies

    settings = load_config()
    configure_logging(settings)
    load_bodies(settings)
    if not settings.api.tokens:
        click.echo(
            "crmqueue api: no [api] tokens configured: every /api/v1 route answers 401"
            " (create one: crmqueue api token create --role admin)",
            err=True,
        )
    serve(settings, host, port, watch_fd)


@api.group("token")
def token() -> None:
    """API bearer tokens."""


def _role(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    from crmqueue.api.auth import parse_role

    try:
        return str(parse_role(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@token.command("create")
@click.option(
    "--role",
    required=True,
    callback=_role,
    help="admin, tenant:<id> or tenant:<id>:user:<id>.",
)
def token_create(role: str) -> None:
    """Print a new token (shown only this once) and the [api] tokens entry holding its
    hash; the token itself is stored nowhere."""
    from crmqueue.api.auth import config_line, new_token, parse_role

    secret = new_token()
    click.echo(secret)
    line = config_line(parse_role(role), secret)
    click.echo(
        f'Add to [api] tokens in crmqueue.toml:  tokens = ["{line}"]\n'
        f"(or CRMQUEUE_API__TOKENS={line}, comma-separated for several). The token is"
        " shown only this once.",
        err=True,
    )


COMMANDS = (api,)
