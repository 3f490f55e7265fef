"""Email templates: the built-ins under crmqueue/templates/email and tenant templates.

Each template is a pair, ``<name>.html.j2`` (autoescaped) and ``<name>.txt.j2``, both
extending the shared layout. The subject comes from the payload, else from the text
template's ``{% block subject %}``. Undefined variables are errors (StrictUndefined), so
a missing context value fails the job permanently with the variable's name instead of
sending a blank; what each template needs is declared (crmqueue.email_rules) and checked
when the job is enqueued.

Context keys are found under either spelling, at any depth: ``firstName`` is read as
``first_name`` and the other way round (the original system's client code wrote
camelCase). A None value or blank text at the top level counts as not given (the
template's fallback; refused at enqueue for a required variable).

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
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2 import nodes

from crmqueue import email_rules
from crmqueue.email_rules import DECLARATION_SUFFIX, Declaration
from crmqueue.errors import CrmQueueError, PermanentError, RetryableError
from crmqueue.fields import check_single_line
from crmqueue.providers.email.sandbox import (
    TemplateBudgetError,
    TemplateSizeError,
    TenantSandbox,
    cpu_budget,
    render_capped,
)

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
    "notification",
)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

# Layout variables every template may use; the job's context overrides them.
DEFAULTS: dict[str, Any] = {"product_name": "CRM"}
# What the renderer itself provides to every template.
PROVIDED = frozenset({*DEFAULTS, "now", "subject"})
# Context nesting followed when adding the other spelling of each key.
_MAX_DEPTH = 32
# Budgets of a tenant template's render (crmqueue.providers.email.sandbox): the output of
# each part, and the CPU time of the whole render (the check at registration and each
# send). Settings email.template_max_chars and email.template_cpu_seconds.
MAX_CHARS = 1_000_000
CPU_SECONDS = 2.0
# Trial renders at registration that find what is required (one per variable and nested
# path left out), at most.
_MAX_TRIALS = 200


@dataclass(frozen=True)
class Budget:
    """What a tenant template's render may use: `max_chars` characters of output per part
    (HTML, text, subject), `cpu_seconds` of CPU time for the whole render."""

    max_chars: int = MAX_CHARS
    cpu_seconds: float = CPU_SECONDS


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
    budget: Budget | None = None,
) -> Path:
    """Check a tenant's template pair and store it; returns the tenant's template
    directory. Replaces an earlier pair of that name.

    The check, in the sandbox it will render in: both parse; neither reads a private
    attribute (``_...``, e.g. ``"".__class__``); both render (subject included) with
    `sample` values, and a stand-in for every other variable they read, within `budget`
    (each render: output per part and CPU time). A variable is required if leaving it out
    makes that render fail in any way; so is a nested path (``user.first_name``: a key
    of a sample mapping, or a member the template read of a stand-in) of a required
    variable. The declaration goes next to the templates (``<name>.vars.json``) for the
    check at enqueue (tenant_declaration). Raises CrmQueueError saying what is wrong."""
    if not _NAME_RE.fullmatch(name):
        raise CrmQueueError(f"template name {name!r}: use lowercase letters, digits, - and _")
    directory = tenant_template_dir(files_dir, tenant_id)
    env = tenant_environment(directory.resolve())
    sources = {"html": html_source, "text": text_source}
    variables: set[str] = set()
    compiled: list[jinja2.Template] = []
    for kind, source in sources.items():
        try:
            ast = env.parse(source)
            for problem in _unsafe_access(ast):
                raise CrmQueueError(f"{kind} template {name!r}: {problem}")
            # Compiling finds what parsing does not: an unknown filter or test.
            compiled.append(env.from_string(source))
        except jinja2.TemplateSyntaxError as exc:
            raise CrmQueueError(
                f"{kind} template {name!r}, line {exc.lineno}: {exc.message}"
            ) from None
        variables |= template_variables(ast)
    variables -= PROVIDED
    budget = budget or Budget()
    sample_values = _with_both_spellings(sample or {})
    html_t, text_t = compiled
    if "subject" not in text_t.blocks:
        raise CrmQueueError(
            f"text template {name!r} has no subject: give it"
            " {% block subject %}...{% endblock %} (the subject of every email sent with it)"
        )
    book = _Book()
    failure = _trial_render(
        html_t, text_t, {**_stand_ins(variables, book), **sample_values}, budget
    )
    if failure is not None:
        raise CrmQueueError(
            f"template {name!r} does not render with sample values: {_describe(failure)}"
            + (
                ""
                if sample or _refusal(failure)
                else " (give realistic sample values if it needs them)"
            )
        )
    # Required: whatever the sample render fails without, in any way (not only an
    # undefined variable: range(n) without n is a TypeError). Nested paths come from the
    # sample's own mappings and from what the template read of a stand-in.
    paths = sorted(book.reads | set(_nested_paths(sample_values)))
    if len(variables) + len(paths) > _MAX_TRIALS:
        raise CrmQueueError(
            f"template {name!r} reads more than {_MAX_TRIALS} variables and nested values"
        )
    started = time.thread_time()
    required: list[str] = []
    for var in sorted(variables):
        _trial_budget(name, started, budget)
        book = _Book()
        given = {**_stand_ins(variables, book), **sample_values}
        without = _without(given, email_rules.spellings(var))
        if _trial_render(html_t, text_t, without, budget) is not None:
            required.append(var)
    for path in paths:
        if path.split(".", 1)[0] not in required:
            continue  # an optional variable's members are needed only when it is given
        _trial_budget(name, started, budget)
        book = _Book(missing=frozenset({path}))
        given = {**_stand_ins(variables, book), **_without_path(sample_values, path)}
        if _trial_render(html_t, text_t, given, budget) is not None:
            required.append(path)
    declaration = Declaration(tuple(required), tuple(sorted(variables - set(required))))
    files = (
        (".html.j2", html_source),
        (".txt.j2", text_source),
        (DECLARATION_SUFFIX, json.dumps(declaration.to_json(), indent=2) + "\n"),
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # The declaration first: an enqueue never sees new templates with an old one.
        for suffix, source in reversed(files):
            handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}", suffix=".tmp")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(source)
            os.replace(temporary, directory / f"{name}{suffix}")
    except OSError as exc:
        raise CrmQueueError(f"template {name!r} cannot be stored in {directory}: {exc}") from None
    email_rules.forget_tenant_templates()
    return directory


def _without(values: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if key not in names}


def _without_path(values: Mapping[str, Any], path: str) -> dict[str, Any]:
    """`values` without the nested key `path` (``user.first_name``), either spelling."""
    head, _, rest = path.partition(".")
    out = _EitherSpelling(values) if isinstance(values, _EitherSpelling) else dict(values)
    for key in email_rules.spellings(head):
        if not dict.__contains__(out, key):  # as stored, not as looked up
            continue
        if not rest:
            del out[key]
        elif isinstance(out[key], Mapping):
            out[key] = _without_path(out[key], rest)
    return out


def _nested_paths(values: Mapping[str, Any], prefix: str = "", depth: int = 0) -> Iterator[str]:
    """The dotted snake_case paths of the keys of mappings inside `values`."""
    for key, item in values.items():
        if not isinstance(key, str):
            continue
        path = prefix + email_rules.spellings(key)[0]
        if prefix:
            yield path
        if isinstance(item, Mapping) and depth < 3:
            yield from _nested_paths(item, path + ".", depth + 1)


def _trial_budget(name: str, started: float, budget: Budget) -> None:
    """The trial renders of a registration together get ten renders' CPU time."""
    if time.thread_time() - started > 10 * budget.cpu_seconds:
        raise CrmQueueError(
            f"template {name!r} is too slow to check: its trial renders used more than "
            f"{10 * budget.cpu_seconds:g}s of CPU time"
        )


def _refusal(failure: BaseException) -> bool:
    """Whether `failure` is the sandbox's or a budget's refusal (no sample value helps)."""
    return isinstance(
        failure, TemplateSizeError | TemplateBudgetError | jinja2.exceptions.SecurityError
    )


def _describe(failure: BaseException) -> str:
    if isinstance(failure, jinja2.UndefinedError | TemplateBudgetError):
        return str(failure)
    return f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__


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
    html_t: jinja2.Template, text_t: jinja2.Template, values: Mapping[str, Any], budget: Budget
) -> BaseException | None:
    """Render both templates and the subject block with `values`; the error, if any."""
    context = {**DEFAULTS, "now": dt.datetime.now(dt.UTC), "subject": "Subject", **values}
    try:
        with cpu_budget(budget.cpu_seconds):
            _render_parts(html_t, text_t, context, None, budget)
    except (Exception, TemplateBudgetError) as exc:  # the template's, reported to the tenant
        return exc
    return None


def _render_parts(
    html_t: jinja2.Template,
    text_t: jinja2.Template,
    values: dict[str, Any],
    subject: str | None,
    budget: Budget | None,
) -> Rendered:
    """Subject (the text template's block unless given), HTML and text; with a `budget`,
    each part is streamed and capped (the caller holds the CPU budget)."""

    def join(chunks: Iterator[str], part: str) -> str:
        if budget is None:
            return "".join(chunks)
        return render_capped(chunks, budget.max_chars, part)

    if subject is None:
        block = text_t.blocks.get("subject")
        if block is None:
            raise PermanentError(f"template {text_t.name!r} has no subject; give one")
        # A template's subject is made one line; a given one is kept as it is.
        subject = " ".join(join(block(text_t.new_context(values)), "subject").split())
    values["subject"] = subject
    html = join(html_t.generate(values), "HTML")
    text = join(text_t.generate(values), "text")
    if budget is not None:  # a tenant's string literal may write one ("\\ud83d")
        for part, output in (("HTML", html), ("text", text)):
            found = _LONE_SURROGATE.search(output)
            if found:
                raise ValueError(
                    f"the {part} part holds a lone surrogate U+{ord(found.group()):04X} "
                    "(no encoding can send it)"
                )
    return Rendered(subject, html, text)


class _Book:
    """What the stand-ins of one trial render saw: the nested paths the template read of
    them, and the one path they pretend not to have."""

    def __init__(self, missing: frozenset[str] = frozenset()) -> None:
        self.reads: set[str] = set()
        self.missing = missing


def _stand_ins(variables: set[str], book: _Book) -> dict[str, _Sample]:
    return {var: _Sample(email_rules.spellings(var)[0], book) for var in variables}


class _Sample(str):
    """A stand-in for a context value at registration: prints as "sample" and reads as a
    mapping, a list, a number or a callable as the template asks. The members read by
    name are recorded in its book (``user.first_name``) as nested paths."""

    __hash__ = str.__hash__
    _path: str | None
    _book: _Book | None

    def __new__(cls, path: str | None = None, book: _Book | None = None) -> _Sample:
        self = super().__new__(cls, "sample")
        self._path, self._book = path, book
        return self

    def _member(self, key: Any, error: type[Exception]) -> _Sample:
        if self._path is None or self._book is None or not isinstance(key, str):
            return _Sample()
        path = f"{self._path}.{email_rules.spellings(key)[0]}"
        if path in self._book.missing:
            raise error(key)
        self._book.reads.add(path)
        return _Sample(path, self._book)

    def __getattr__(self, name: str) -> _Sample:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._member(name, AttributeError)

    def __getitem__(self, key: Any) -> _Sample:
        return self._member(key, KeyError)

    def __iter__(self) -> Iterator[str]:
        return iter((_Sample(),))

    def __call__(self, *args: Any, **kwargs: Any) -> _Sample:
        return _Sample()

    def __int__(self) -> int:
        return 1

    def __float__(self) -> float:
        return 1.0

    def __round__(self, ndigits: int | None = None) -> float:
        return 1.0

    def __add__(self, other: Any) -> Any:
        return _Sample() if not isinstance(other, str) else str.__add__(self, other)

    def __radd__(self, other: Any) -> Any:
        return _Sample()

    def __sub__(self, other: Any) -> _Sample:
        return _Sample()

    __rsub__ = __truediv__ = __rtruediv__ = __floordiv__ = __sub__

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other) if isinstance(other, str) else False

    def __lt__(self, other: Any) -> bool:
        return str.__lt__(self, other) if isinstance(other, str) else False

    __le__ = __gt__ = __ge__ = __lt__


class _EitherSpelling(dict[Any, Any]):
    """A nested context mapping that answers a key under its other spelling too
    (``user.firstName`` finds ``first_name``) without adding keys: a template that loops
    over it (``deal.items()``, ``|tojson``) sees only what was given."""

    def __missing__(self, key: Any) -> Any:
        if isinstance(key, str):
            for spelling in email_rules.spellings(key):
                if spelling != key and dict.__contains__(self, spelling):
                    return dict.__getitem__(self, spelling)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return True
        return isinstance(key, str) and any(
            dict.__contains__(self, spelling) for spelling in email_rules.spellings(key)
        )

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 (self.get is this method)


def _with_both_spellings(value: Any, depth: int = 0) -> Any:
    """`value` with every mapping key also found under its other spelling (first_name and
    firstName), through nested mappings and lists. The top level gets both keys (Jinja
    copies it into its own context); nested mappings answer either spelling as they are."""
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        items = {key: _with_both_spellings(item, depth + 1) for key, item in value.items()}
        if depth:
            return _EitherSpelling(items)
        for key, item in list(items.items()):
            if isinstance(key, str):
                for spelling in email_rules.spellings(key):
                    items.setdefault(spelling, item)
        return items
    if isinstance(value, list | tuple):
        return [_with_both_spellings(item, depth + 1) for item in value]
    return value


def template_values(context: Mapping[str, Any]) -> dict[str, Any]:
    """What a template sees: the layout's defaults, then `context` under both spellings
    (a None or blank text at the top level left out, so the template's fallback applies,
    as for a value not given: email_rules.is_given)."""
    given = {key: value for key, value in context.items() if email_rules.is_given(value)}
    return {**DEFAULTS, "now": dt.datetime.now(dt.UTC), **_with_both_spellings(given)}


def render(
    template: str,
    context: Mapping[str, Any],
    subject: str | None = None,
    *,
    tenant_dir: Path | None = None,
    budget: Budget | None = None,
) -> Rendered:
    """Render `template` (HTML and text) with `context`; a tenant's template within
    `budget` (default: Budget()). Raises PermanentError naming a missing variable, an
    unknown template, a sandbox violation or the budget it went past."""
    if not _NAME_RE.fullmatch(template):
        raise PermanentError(f"invalid template name {template!r}")
    env = builtin_environment()
    # os.path on purpose: this runs for every email, and pathlib costs several times more.
    if tenant_dir is not None and os.path.isfile(os.path.join(tenant_dir, f"{template}.html.j2")):
        env = tenant_environment(tenant_dir.resolve())
    values = template_values(context)
    tenant = env is not builtin_environment()
    # The enqueue check again (a job enqueued without it, or before a template changed).
    declaration = (
        email_rules.tenant_declaration_at(str(tenant_dir), template)
        if tenant
        else email_rules.builtin_declarations().get(template)
    )
    missing = email_rules.missing_variables(declaration, context) if declaration else []
    if missing:
        raise PermanentError(f"template {template!r} needs {email_rules.describe(missing)}")
    try:
        html_t = env.get_template(f"{template}.html.j2")
        text_t = env.get_template(f"{template}.txt.j2")
        if tenant:
            budget = budget or Budget()
            with cpu_budget(budget.cpu_seconds):
                rendered = _render_parts(html_t, text_t, values, subject, budget)
        else:
            rendered = _render_parts(html_t, text_t, values, subject, None)
    except TemplateBudgetError as exc:  # the same on every retry
        raise PermanentError(f"template {template!r} went past its budget: {exc}") from None
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
    if not rendered.subject.strip():
        raise PermanentError(f"template {template!r} rendered an empty subject")
    try:  # the rule of a given subject (EmailPayload): refused, the same on every retry
        check_single_line(rendered.subject)
    except ValueError as exc:
        raise PermanentError(f"template {template!r} rendered a subject that {exc}") from None
    return Rendered(rendered.subject, rendered.html, rendered.text.strip() + "\n")
