"""``crmqueue email template-add|preview|test``: email templates and the provider."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from crmqueue.cli.common import group, load_config
from crmqueue.errors import CrmQueueError
from crmqueue.json_text import loads, text_problems

# Every option of this group that is text is checked here (a lone surrogate from a JSON
# escape or a byte of a non-UTF-8 argument, NUL), files are read as UTF-8 (the templates'
# encoding) and what is printed or written is text every encoding takes: one line on
# error, never a traceback.


def _text(value: str | None, option: str) -> str | None:
    if value is not None:
        found = text_problems(value)
        if found:
            raise CrmQueueError(f"{option}: {found[0][1]}")
    return value


def _json_object(text: str, option: str) -> dict[str, object]:
    try:
        value = loads(text)
    except ValueError as exc:
        raise CrmQueueError(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CrmQueueError(f"{option} must be a JSON object")
    found = text_problems(value)
    if found:
        raise CrmQueueError(f"{option}: " + "; ".join(f"{path}: {why}" for path, why in found))
    return value


def _read_template(file: str, option: str) -> str:
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise CrmQueueError(f"{option} {file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise CrmQueueError(
            f"{option} {file}: not UTF-8 at byte {exc.start} ({exc.reason}); "
            "save the template as UTF-8"
        ) from None


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise CrmQueueError(f"--out: cannot write {path!r}: {exc}") from None


def _echo(text: str) -> None:
    # A terminal or pipe in another encoding, or a lone surrogate a template wrote.
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    click.echo(text.encode(encoding, "backslashreplace").decode(encoding))


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
    from crmqueue.workers.email import render_budget

    _text(name, "NAME")
    _text(tenant, "--tenant")
    settings = load_config()
    sample = None if sample_json is None else _json_object(sample_json, "--sample")
    directory = register_tenant_template(
        Path(settings.files.dir),
        tenant,
        name,
        _read_template(html_file, "--html"),
        _read_template(text_file, "--text"),
        sample=sample,
        budget=render_budget(settings),
    )
    _echo(f"template {name!r} registered for tenant {tenant!r} in {directory}")
    declaration = tenant_declaration(directory, name)
    if declaration is not None:
        required = ", ".join(declaration.required) or "none"
        optional = ", ".join(declaration.optional) or "none"
        _echo(f"required variables: {required}; optional: {optional}")


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
    from crmqueue.workers.email import render_budget

    _text(template, "TEMPLATE")
    _text(subject, "--subject")
    _text(tenant, "--tenant")
    settings = load_config()
    context = _json_object(context_json, "--context")
    tenant_dir = tenant_template_dir(Path(settings.files.dir), tenant) if tenant else None
    rendered = render(
        template, context, subject, tenant_dir=tenant_dir, budget=render_budget(settings)
    )
    if out:
        directory = Path(out)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (OSError, UnicodeError) as exc:
            raise CrmQueueError(f"--out: cannot create {out!r}: {exc}") from None
        _write(directory / f"{template}.html", rendered.html)
        _write(directory / f"{template}.txt", rendered.text)
        _echo(f"Subject: {rendered.subject}")
        _echo(f"wrote {directory / f'{template}.html'} and {directory / f'{template}.txt'}")
        return
    _echo(f"Subject: {rendered.subject}\n\n--- text ---\n{rendered.text}\n--- html ---")
    _echo(rendered.html)


@email_group.command("test")
@click.option("--to", "address", required=True, help="Recipient address.")
def email_test(address: str) -> None:
    """Send a test message through the configured provider; print the vendor's message id."""
    import uuid

    from crmqueue.payloads import EmailPayload, validate_payload
    from crmqueue.providers.email import get_provider
    from crmqueue.workers.email import build_email

    _text(address, "--to")
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
    _echo(f"sent through {result.provider}: message id {result.message_id}")


COMMANDS = (email_group,)
