"""Email templates: the built-ins under crmqueue/templates/email and tenant templates.

Each template is a pair, ``<name>.html.j2`` (autoescaped) and ``<name>.txt.j2``, both
extending the shared layout. The subject comes from the payload, else from the text
template's ``{% block subject %}``. Undefined variables are errors (StrictUndefined), so
a missing context value fails the job permanently with the variable's name instead of
sending a blank; what each template needs is declared (crmqueue.email_rules) and checked
when the job is enqueued.

Context keys are found under either spelling, at any depth: ``firstName`` is read as
``first_name`` and the other way round (the original system's client code wrote
camelCase). A None value at the top level counts as not given (the template's fallback).

Tenant templates live under ``<files.dir>/templates/<tenant>/`` for now (until the CRM
store has a table for them) and render in Jinja2's sandbox; they may extend the built-in
layout. A tenant template with a built-in's name replaces it for that tenant. Registering
one checks it: it must parse, must not reach for private attributes, and must render in
the sandbox with sample values; what it needs is recorded next to it (``.vars.json``).

Rendering is deterministic: any failure but reading a template file will fail again on
a retry, so it is a PermanentError at once.
"""

from __future__ import annotations

import datetime as dt
import json
import operator
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

from crmqueue import email_rules
from crmqueue.email_rules import DECLARATION_SUFFIX, Declaration
from crmqueue.errors import CrmQueueError, PermanentError, RetryableError

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
# What the renderer itself provides to every template.
PROVIDED = frozenset({*DEFAULTS, "now", "subject"})
# The most a `*` (repetition) or `**` may build in a tenant template: the sandbox limits
# range() (100,000) but not these.
MAX_BUILT = 100_000
# Context nesting followed when adding the other spelling of each key.
_MAX_DEPTH = 32


class TenantSandbox(SandboxedEnvironment):
    """Jinja2's sandbox, plus a cap on what `*` and `**` may build."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: jinja2.runtime.Context, op: str, left: Any, right: Any) -> Any:
        if op == "**":
            if isinstance(right, int | float) and abs(right) > 1000:
                raise OverflowError(f"exponent {right} is too large for a template")
            return operator.pow(left, right)
        count = right if isinstance(left, str | list | tuple) else left
        item = left if count is right else right
        if (
            isinstance(item, str | list | tuple)
            and isinstance(count, int)
            and len(item) * count > MAX_BUILT
        ):
            raise OverflowError(
                f"repetition of {len(item) * count} items is more than a template may "
                f"build ({MAX_BUILT})"
            )
        return operator.mul(left, right)


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
    return _environment(TenantSandbox, loader)


@lru_cache(maxsize=1024)
def tenant_template_dir(files_dir: Path, tenant_id: str) -> Path:
    if not _TENANT_RE.fullmatch(tenant_id) or tenant_id in (".", ".."):
        raise PermanentError(f"invalid tenant id {tenant_id!r}")
    return files_dir / "templates" / tenant_id


def register_tenant_template(
    files_dir: Path,
    tenant_id: str,
    name: str,
    html_source: str,
    text_source: str,
    *,
    sample: Mapping[str, Any] | None = None,
) -> Path:
    """Check a tenant's template pair and store it; returns the tenant's template
    directory. Replaces an earlier pair of that name.

    The check, in the sandbox it will render in: both parse; neither reads a private
    attribute (``_...``, e.g. ``"".__class__``); both render (subject included) with
    `sample` values, and a stand-in for every other variable they read. Which variables
    are required is found by leaving each out in turn; the declaration goes next to the
    templates (``<name>.vars.json``) for the check at enqueue (tenant_declaration).
    Raises CrmQueueError saying what is wrong."""
    if not _NAME_RE.fullmatch(name):
        raise CrmQueueError(f"template name {name!r}: use lowercase letters, digits, - and _")
    directory = tenant_template_dir(files_dir, tenant_id)
    env = tenant_environment(directory.resolve())
    sources = {"html": html_source, "text": text_source}
    variables: set[str] = set()
    for kind, source in sources.items():
        try:
            ast = env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise CrmQueueError(
                f"{kind} template {name!r}, line {exc.lineno}: {exc.message}"
            ) from None
        for problem in _unsafe_access(ast):
            raise CrmQueueError(f"{kind} template {name!r}: {problem}")
        variables |= template_variables(ast)
    variables -= PROVIDED
    given = {**{var: SAMPLE for var in variables}, **_with_both_spellings(sample or {})}
    html_t, text_t = (env.from_string(source) for source in sources.values())
    failure = _trial_render(html_t, text_t, given)
    if failure is not None:
        raise CrmQueueError(
            f"template {name!r} does not render with sample values: {failure}"
            + ("" if sample else " (give realistic sample values if it needs them)")
        )
    required = sorted(
        var
        for var in variables
        if isinstance(
            _trial_render(html_t, text_t, _without(given, email_rules.spellings(var))),
            jinja2.UndefinedError,
        )
    )
    declaration = Declaration(tuple(required), tuple(sorted(variables - set(required))))
    directory.mkdir(parents=True, exist_ok=True)
    files = (
        (".html.j2", html_source),
        (".txt.j2", text_source),
        (DECLARATION_SUFFIX, json.dumps(declaration.to_json(), indent=2) + "\n"),
    )
    # The declaration first: an enqueue never sees new templates with an old declaration.
    for suffix, source in reversed(files):
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}", suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(source)
        os.replace(temporary, directory / f"{name}{suffix}")
    email_rules.forget_tenant_templates()
    return directory


def _without(values: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if key not in names}


def tenant_declaration(directory: Path, name: str) -> Declaration | None:
    """What tenant template `name` in `directory` needs (None: registered before
    declarations were recorded)."""
    path = directory / f"{name}{DECLARATION_SUFFIX}"
    if not path.is_file():
        return None
    return Declaration.from_json(json.loads(path.read_text(encoding="utf-8")))


def template_variables(ast: nodes.Template) -> set[str]:
    """The context variables a parsed template reads (not the macros it imports)."""
    imported: set[str] = set()
    for node in ast.find_all((nodes.FromImport, nodes.Import)):
        if isinstance(node, nodes.Import):
            imported.add(node.target)
        elif isinstance(node, nodes.FromImport):
            imported |= {name if isinstance(name, str) else name[1] for name in node.names}
    return jinja2.meta.find_undeclared_variables(ast) - imported


def _unsafe_access(ast: nodes.Template) -> Iterator[str]:
    """Reads of private attributes (``x._y``, ``x["_y"]``, ``x|attr("_y")``): the sandbox
    refuses them when rendered, so a template with one is refused when registered."""
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            attribute: Any = node.attr
        elif isinstance(node, nodes.Getitem):
            attribute = node.arg.value if isinstance(node.arg, nodes.Const) else None
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            first = node.args[0]
            attribute = first.value if isinstance(first, nodes.Const) else None
        else:
            attribute = None
        if isinstance(attribute, str) and attribute.startswith("_"):
            yield f"line {node.lineno}: access to {attribute!r} is not allowed (private attribute)"


def _trial_render(
    html_t: jinja2.Template, text_t: jinja2.Template, values: Mapping[str, Any]
) -> Exception | None:
    """Render both templates and the subject block with `values`; the error, if any."""
    context = {**DEFAULTS, "now": dt.datetime.now(dt.UTC), "subject": "Subject", **values}
    try:
        block = text_t.blocks.get("subject")
        if block is not None:
            "".join(block(text_t.new_context(context)))
        html_t.render(context)
        text_t.render(context)
    except Exception as exc:  # any failure is the template's, reported to the tenant
        return exc
    return None


class _Sample(str):
    """A stand-in for a context value at registration: prints as "sample" and reads as a
    mapping, a list, a number or a callable as the template asks."""

    __hash__ = str.__hash__

    def __new__(cls) -> _Sample:
        return super().__new__(cls, "sample")

    def __getattr__(self, name: str) -> _Sample:
        if name.startswith("_"):
            raise AttributeError(name)
        return self

    def __getitem__(self, key: Any) -> _Sample:
        return self

    def __iter__(self) -> Iterator[str]:
        return iter((self,))

    def __call__(self, *args: Any, **kwargs: Any) -> _Sample:
        return self

    def __int__(self) -> int:
        return 1

    def __float__(self) -> float:
        return 1.0

    def __round__(self, ndigits: int | None = None) -> float:
        return 1.0

    def __add__(self, other: Any) -> Any:
        return self if not isinstance(other, str) else str.__add__(self, other)

    def __radd__(self, other: Any) -> Any:
        return self

    def __sub__(self, other: Any) -> _Sample:
        return self

    __rsub__ = __truediv__ = __rtruediv__ = __floordiv__ = __sub__

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other) if isinstance(other, str) else False

    def __lt__(self, other: Any) -> bool:
        return str.__lt__(self, other) if isinstance(other, str) else False

    __le__ = __gt__ = __ge__ = __lt__


SAMPLE = _Sample()


def _with_both_spellings(value: Any, depth: int = 0) -> Any:
    """`value` with every mapping key also under its other spelling (first_name and
    firstName), through nested mappings and lists; a key given in both keeps both."""
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        out = {key: _with_both_spellings(item, depth + 1) for key, item in value.items()}
        for key, item in list(out.items()):
            if isinstance(key, str):
                for spelling in email_rules.spellings(key):
                    out.setdefault(spelling, item)
        return out
    if isinstance(value, list | tuple):
        return [_with_both_spellings(item, depth + 1) for item in value]
    return value


def template_values(context: Mapping[str, Any]) -> dict[str, Any]:
    """What a template sees: the layout's defaults, then `context` under both spellings
    (a None at the top level left out, so the template's fallback applies)."""
    given = {key: value for key, value in context.items() if value is not None}
    return {**DEFAULTS, "now": dt.datetime.now(dt.UTC), **_with_both_spellings(given)}


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
    values = template_values(context)
    try:
        html_t = env.get_template(f"{template}.html.j2")
        text_t = env.get_template(f"{template}.txt.j2")
        if subject is None:
            block = text_t.blocks.get("subject")
            if block is None:
                raise PermanentError(f"template {template!r} has no subject; give one")
            # A template's subject is made one line; a given one is kept as it is.
            subject = " ".join("".join(block(text_t.new_context(values))).split())
        values["subject"] = subject
        html = html_t.render(values)
        text = text_t.render(values)
    except CrmQueueError:
        raise
    except jinja2.TemplateNotFound as exc:
        raise PermanentError(f"unknown email template {template!r} ({exc.name})") from exc
    except jinja2.UndefinedError as exc:
        raise PermanentError(f"template {template!r}: {exc.message}") from exc
    except jinja2.exceptions.SecurityError as exc:
        raise PermanentError(f"template {template!r} is not allowed: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise PermanentError(f"template {template!r} failed: {exc}") from exc
    except OSError as exc:  # reading a template file (a shared files directory): may pass
        raise RetryableError(f"template {template!r} could not be read: {exc}") from exc
    except Exception as exc:  # OverflowError, TypeError, ...: the same on every retry
        raise PermanentError(f"template {template!r} failed: {type(exc).__name__}: {exc}") from exc
    if not subject.strip():
        raise PermanentError(f"template {template!r} rendered an empty subject")
    return Rendered(subject=subject, html=html, text=text.strip() + "\n")
