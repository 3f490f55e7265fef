"""``crmqueue email template-add|preview|test``: email templates and the provider."""

from __future__ import annotations

import json
from pathlib import Path

import click

from crmqueue.cli.common import group, load_config
from crmqueue.errors import CrmQueueError


@group("email")
def email_group() -> None:
    """Preview email templates; send a test message through the configured provider."""


@email_group.command("template-add")
@click.argument("name")
@click.option("--tenant", required=True, help="The tenant the template belongs to.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, exists=True), required=True)
@click.option("--text", "text_file", type=click.Path(dir_okay=False, exists=True), required=True)
@click.option(
    "--sample",
    "sample_json",
    default=None,
    help="Sample values (JSON object) for the check render, where stand-ins do not fit.",
)
def email_template_add(
    name: str, tenant: str, html_file: str, text_file: str, sample_json: str | None
) -> None:
    """Register a tenant's own template NAME (HTML and text; rendered in Jinja2's sandbox).
    A tenant template with a built-in's name replaces the built-in for that tenant. It is
    checked first (parses, no private attributes, renders with sample values); the
    variables it needs are recorded and checked when an email is enqueued."""
    from crmqueue.providers.email.render import register_tenant_template, tenant_declaration

    settings = load_config()
    sample = None
    if sample_json is not None:
        try:
            sample = json.loads(sample_json)
        except ValueError as exc:
            raise CrmQueueError(f"--sample is not valid JSON: {exc}") from exc
        if not isinstance(sample, dict):
            raise CrmQueueError("--sample must be a JSON object")
    directory = register_tenant_template(
        Path(settings.files.dir),
        tenant,
        name,
        Path(html_file).read_text(encoding="utf-8"),
        Path(text_file).read_text(encoding="utf-8"),
        sample=sample,
    )
    click.echo(f"template {name!r} registered for tenant {tenant!r} in {directory}")
    declaration = tenant_declaration(directory, name)
    if declaration is not None:
        required = ", ".join(declaration.required) or "none"
        optional = ", ".join(declaration.optional) or "none"
        click.echo(f"required variables: {required}; optional: {optional}")


@email_group.command("preview")
@click.argument("template")
@click.option("--context", "context_json", default="{}", help="Template variables (JSON object).")
@click.option("--subject", default=None, help="Subject (default: the template's own).")
@click.option("--tenant", default=None, help="Use this tenant's template if it has one.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write <template>.html and <template>.txt into this directory instead of printing.",
)
def email_preview(
    template: str, context_json: str, subject: str | None, tenant: str | None, out: str | None
) -> None:
    """Render TEMPLATE (HTML and text) with --context and print or save it."""
    from crmqueue.providers.email.render import render, tenant_template_dir

    settings = load_config()
    try:
        context = json.loads(context_json)
    except ValueError as exc:
        raise CrmQueueError(f"--context is not valid JSON: {exc}") from exc
    if not isinstance(context, dict):
        raise CrmQueueError("--context must be a JSON object")
    tenant_dir = tenant_template_dir(Path(settings.files.dir), tenant) if tenant else None
    rendered = render(template, context, subject, tenant_dir=tenant_dir)
    if out:
        directory = Path(out)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{template}.html").write_text(rendered.html, encoding="utf-8")
        (directory / f"{template}.txt").write_text(rendered.text, encoding="utf-8")
        click.echo(f"Subject: {rendered.subject}")
        click.echo(f"wrote {directory / f'{template}.html'} and {directory / f'{template}.txt'}")
        return
    click.echo(f"Subject: {rendered.subject}\n\n--- text ---\n{rendered.text}\n--- html ---")
    click.echo(rendered.html)


@email_group.command("test")
@click.option("--to", "address", required=True, help="Recipient address.")
def email_test(address: str) -> None:
    """Send a test message through the configured provider; print the vendor's message id."""
    import uuid

    from crmqueue.payloads import EmailPayload, validate_payload
    from crmqueue.providers.email import get_provider
    from crmqueue.workers.email import build_email

    settings = load_config()
    payload = validate_payload(
        EmailPayload,
        {
            "tenant_id": "crmqueue-test",
            "to": address,
            "subject": "crmqueue test email",
            "template": "welcome",
            "context": {"first_name": "there"},
        },
    )
    email = build_email(payload, settings, f"crmqueue-test-{uuid.uuid4().hex}")
    result = get_provider(settings.email).send(email)
    click.echo(f"sent through {result.provider}: message id {result.message_id}")


COMMANDS = (email_group,)
