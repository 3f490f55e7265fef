"""Email templates: the built-ins under crmqueue/templates/email and tenant templates.

Each template is a pair, ``<name>.html.j2`` (autoescaped) and ``<name>.txt.j2``, both
extending the shared layout. The subject comes from the payload, else from the text
template's ``{% block subject %}``. Undefined variables are errors (StrictUndefined), so
a missing context value fails the job permanently with the variable's name instead of
sending a blank.

Tenant templates live under ``<files.dir>/templates/<tenant>/`` for now (until the CRM
store has a table for them) and render in Jinja2's sandbox; they may extend the built-in
layout. A tenant template with a built-in's name replaces it for that tenant.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from crmqueue.errors import CrmQueueError, PermanentError

BUILTIN_DIR = Path(__file__).resolve().parent.parent.parent / "templates" / "email"
BUILTIN_TEMPLATES = (
    "welcome",
    "password-reset",
    "contact-created",
    "activity-reminder",
    "lead-assigned",
    "export-ready",
    "import-completed",
    "report-ready",
)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

# Layout variables every template may use; the job's context overrides them.
DEFAULTS: dict[str, Any] = {"product_name": "CRM"}


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


def _environment(
    cls: type[jinja2.Environment], loader: jinja2.BaseLoader, *, auto_reload: bool = True
) -> jinja2.Environment:
    return cls(
        loader=loader,
        auto_reload=auto_reload,
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html.j2",), default_for_string=False
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@lru_cache(maxsize=1)
def builtin_environment() -> jinja2.Environment:
    # The built-ins ship with the code and change only with a deploy (which restarts the
    # workers): no up-to-date check, which would stat every template, layout and macro
    # file of every email. Tenant templates change at run time and keep the check.
    return _environment(jinja2.Environment, jinja2.FileSystemLoader(BUILTIN_DIR), auto_reload=False)


@lru_cache(maxsize=64)
def tenant_environment(tenant_dir: Path) -> jinja2.Environment:
    loader = jinja2.ChoiceLoader(
        [jinja2.FileSystemLoader(tenant_dir), jinja2.FileSystemLoader(BUILTIN_DIR)]
    )
    return _environment(SandboxedEnvironment, loader)


@lru_cache(maxsize=1024)
def tenant_template_dir(files_dir: Path, tenant_id: str) -> Path:
    if not _TENANT_RE.fullmatch(tenant_id) or tenant_id in (".", ".."):
        raise PermanentError(f"invalid tenant id {tenant_id!r}")
    return files_dir / "templates" / tenant_id


def register_tenant_template(
    files_dir: Path, tenant_id: str, name: str, html_source: str, text_source: str
) -> Path:
    """Store a tenant's template pair after checking that both parse in the sandbox;
    returns the tenant's template directory. Replaces an earlier pair of that name."""
    if not _NAME_RE.fullmatch(name):
        raise CrmQueueError(f"template name {name!r}: use lowercase letters, digits, - and _")
    directory = tenant_template_dir(files_dir, tenant_id)
    env = tenant_environment(directory.resolve())
    for kind, source in (("html", html_source), ("text", text_source)):
        try:
            env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise CrmQueueError(
                f"{kind} template {name!r}, line {exc.lineno}: {exc.message}"
            ) from None
    directory.mkdir(parents=True, exist_ok=True)
    for suffix, source in ((".html.j2", html_source), (".txt.j2", text_source)):
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}", suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(source)
        os.replace(temporary, directory / f"{name}{suffix}")
    return directory


def render(
    template: str,
    context: Mapping[str, Any],
    subject: str | None = None,
    *,
    tenant_dir: Path | None = None,
) -> Rendered:
    """Render `template` (HTML and text) with `context`; raises PermanentError naming a
    missing variable, an unknown template or a sandbox violation."""
    if not _NAME_RE.fullmatch(template):
        raise PermanentError(f"invalid template name {template!r}")
    env = builtin_environment()
    # os.path on purpose: this runs for every email, and pathlib costs several times more.
    if tenant_dir is not None and os.path.isfile(os.path.join(tenant_dir, f"{template}.html.j2")):
        env = tenant_environment(tenant_dir.resolve())
    values = {**DEFAULTS, "now": dt.datetime.now(dt.UTC), **context}
    try:
        html_t = env.get_template(f"{template}.html.j2")
        text_t = env.get_template(f"{template}.txt.j2")
        if subject is None:
            block = text_t.blocks.get("subject")
            if block is None:
                raise PermanentError(f"template {template!r} has no subject; give one")
            subject = "".join(block(text_t.new_context(values))).strip()
        values["subject"] = subject
        html = html_t.render(values)
        text = text_t.render(values)
    except jinja2.TemplateNotFound as exc:
        raise PermanentError(f"unknown email template {template!r} ({exc.name})") from exc
    except jinja2.UndefinedError as exc:
        raise PermanentError(f"template {template!r}: {exc.message}") from exc
    except jinja2.exceptions.SecurityError as exc:
        raise PermanentError(f"template {template!r} is not allowed: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise PermanentError(f"template {template!r} failed: {exc}") from exc
    subject = " ".join(subject.split())
    if not subject:
        raise PermanentError(f"template {template!r} rendered an empty subject")
    return Rendered(subject=subject, html=html, text=text.strip() + "\n")
