"""The sandbox tenant templates render in: Jinja2's SandboxedEnvironment plus budgets.

Jinja2's sandbox refuses unsafe attribute access and caps ``range()`` (100,000 items), but
nothing else a template builds: ``"x"|center(100000000)``, ``"%0100000000d" % 1``, string
doubling with ``~`` in a loop, or two nested loops of 100,000 each all run until memory or
the job's time limit runs out. Here:

- every value a template operation builds (operators, ``~``, method calls, filters,
  globals) is at most MAX_BUILT characters or items; an operation whose size is fixed by
  an argument (a width, a count, a repetition, a printf width) is refused before it
  allocates, the others are checked on their result (at most a few times the cap, once);
- the output of each part is streamed (``Template.generate``) and stopped past the
  configured number of characters (``email.template_max_chars``);
- the render runs under a CPU-time budget of the calling thread (``time.thread_time``),
  enforced by a trace function (``sys.settrace``) that looks at the clock every few
  hundred Python events. A trace rather than the consumer's job time limit
  (crmqueue.engine.limits, an asynchronous exception): it works where there is no
  consumer (``email template-add`` and ``preview`` in the CLI), it nests inside the job's
  own limit (that watchdog keeps one deadline per thread), it counts CPU time, not time
  spent waiting for a share of a busy machine, and it raises where the template runs,
  synchronously. Its cost (a Python call per event) is paid by tenant templates only.

A size refusal raises TemplateSizeError, a budget refusal TemplateBudgetError; the
renderer turns both into a permanent failure.
"""

from __future__ import annotations

import functools
import operator
import re
import sys
import time
from collections.abc import Callable, Iterator, Sized
from contextlib import contextmanager
from types import FrameType
from typing import Any

import jinja2
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import SandboxedEnvironment

__all__ = [
    "MAX_BUILT",
    "MAX_INT_BITS",
    "TemplateBudgetError",
    "TemplateSizeError",
    "TenantSandbox",
    "cpu_budget",
    "render_capped",
]

# The most characters (of a string) or items (of a list, dict, ...) one template
# operation may build: far more than an email needs, far less than hurts a worker.
MAX_BUILT = 1_000_000
# The largest integer a template may compute (about 3,000 decimal digits).
MAX_INT_BITS = 10_000
# A JSON indent or a printf/format width past this is not for an email.
_MAX_WIDTH = 1_000
# Python events between two looks at the CPU clock.
_CHECK_EVERY = 256


class TemplateBudgetError(BaseException):
    """A tenant template's render went past its CPU time or its output cap. Raised from a
    trace function, i.e. anywhere inside the render: a BaseException, so that no
    ``except Exception`` inside Jinja2 or a filter swallows it."""


class TemplateSizeError(Exception):
    """A template operation would build more than MAX_BUILT (or too large a number, or
    too wide a format). Raised by the sandbox's own hooks, called from template code: an
    Exception, so that Jinja2's constant folding at compile time leaves the operation to
    the render instead of failing the compile."""


def _refuse(what: str) -> TemplateSizeError:
    return TemplateSizeError(f"{what} is more than a template may build ({MAX_BUILT:,})")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, Sized) and not isinstance(value, range) else 0


def _check_result(value: Any, what: str) -> Any:
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        if len(value) > MAX_BUILT:
            raise _refuse(f"{what}: {len(value):,} characters or items")
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise TemplateSizeError(f"{what}: a number of more than {MAX_INT_BITS} bits")
    return value


def _want(total: int, what: str) -> None:
    if total > MAX_BUILT:
        raise _refuse(f"{what}: {total:,} characters or items")


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0


# A printf conversion (`%` and the format filter): the width and precision decide the size.
_PRINTF_RE = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
# A digit run inside a str.format field spec, or a nested field (a width from an argument).
_FORMAT_SPEC_RE = re.compile(r"\{[^{}]*:[^{}]*?(\d+)|\{[^{}]*:[^{}]*\{")


def _check_printf(template: Any) -> None:
    if not isinstance(template, str):
        return
    for match in _PRINTF_RE.finditer(template):
        for width in match.groups():
            if width == "*" or (width and int(width) > _MAX_WIDTH):
                raise TemplateSizeError(
                    f"a %-format width or precision over {_MAX_WIDTH} (or '*') is not allowed"
                )


def _check_format_spec(template: Any) -> None:
    if not isinstance(template, str):
        return
    for match in _FORMAT_SPEC_RE.finditer(template):
        width = match.group(1)
        if width is None or int(width) > _MAX_WIDTH:
            raise TemplateSizeError(
                f"a format width over {_MAX_WIDTH}, or one taken from an argument, is not allowed"
            )


def _joined_size(items: list[Any], separator: Any) -> int:
    return sum(_size(item) or len(str(item)) for item in items) + len(items) * _size(separator)


def _replaced_size(text: Any, old: Any, new: Any, count: Any = None) -> int:
    if not isinstance(text, str | bytes) or not isinstance(old, str | bytes):
        return 0
    hits = len(text) + 1 if not old else text.count(old)  # type: ignore[arg-type]
    if count is not None and _as_int(count) >= 0:
        hits = min(hits, _as_int(count))
    return len(text) + hits * _size(new)


def _lines(text: Any) -> int:
    return str(text).count("\n") + 1


# Checks before a call, by method or filter name: what the call would build, from its
# arguments. Each takes (subject, *args, **kwargs) where the subject is the string or
# value the method is bound to / the filter is applied to.
_Check = Callable[..., None]


def _width_check(subject: Any, width: Any = 0, *args: Any, **kwargs: Any) -> None:
    _want(max(_as_int(kwargs.get("width", width)), 0) + _size(subject), "a padded string")


def _expandtabs_check(subject: Any, tabsize: Any = 8, **kwargs: Any) -> None:
    tabs = subject.count("\t") if isinstance(subject, str) else 0
    _want(_size(subject) + tabs * max(_as_int(kwargs.get("tabsize", tabsize)), 0), "expandtabs")


def _replace_check(
    subject: Any, old: Any = "", new: Any = "", count: Any = None, **kw: Any
) -> None:
    _want(_replaced_size(subject, old, new, kw.get("count", count)), "a replacement")


def _translate_check(subject: Any, table: Any = None, **kwargs: Any) -> None:
    longest = max((_size(v) for v in table.values()), default=1) if isinstance(table, dict) else 1
    _want(_size(subject) * max(longest, 1), "a translation")


def _to_bytes_check(subject: Any, length: Any = 1, *args: Any, **kwargs: Any) -> None:
    _want(_as_int(kwargs.get("length", length)), "int.to_bytes")


def _indent_check(subject: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
    width = kwargs.get("width", width)
    per_line = len(width) if isinstance(width, str) else max(_as_int(width), 0)
    _want(_size(str(subject)) + _lines(subject) * per_line, "an indented string")


def _wordwrap_check(subject: Any, width: Any = 79, *args: Any, **kwargs: Any) -> None:
    wrap = kwargs.get("wrapstring", args[1] if len(args) > 1 else None) or "\n"
    breaks = len(str(subject)) // max(_as_int(kwargs.get("width", width)), 1) + _lines(subject)
    _want(len(str(subject)) + breaks * _size(wrap), "a wrapped string")


def _count_check(name: str, position: int) -> _Check:
    def check(subject: Any, *args: Any, **kwargs: Any) -> None:
        value = kwargs.get(name, args[position] if len(args) > position else 0)
        _want(max(_as_int(value), 0), f"{name}")

    return check


def _tojson_check(subject: Any, indent: Any = None, **kwargs: Any) -> None:
    indent = kwargs.get("indent", indent)
    if indent is not None and (_as_int(indent) > _MAX_WIDTH or isinstance(indent, str)):
        raise TemplateSizeError(f"a JSON indent over {_MAX_WIDTH} is not allowed")


def _sum_check(subject: Any, *args: Any, **kwargs: Any) -> None:
    if isinstance(subject, list | tuple):
        _want(sum(_size(item) for item in subject), "a sum of sequences")


def _rough_size(value: Any) -> int:
    """About how many characters `value` prints as (a sequence: 8 a item)."""
    if isinstance(value, str | bytes):
        return len(value)
    return 8 * len(value) if isinstance(value, Sized) else 32


def _substituted_size(template: Any, marker: str, values: list[Any]) -> int:
    """The most a format string with `marker` fields can print with `values`: each field
    may print the largest of them (fields can repeat one value: "{0}{0}{0}")."""
    if not isinstance(template, str):
        return 0
    return len(template) + template.count(marker) * max(map(_rough_size, values), default=0)


def _printf_values(right: Any) -> list[Any]:
    if isinstance(right, tuple):
        return list(right)
    return list(right.values()) if isinstance(right, dict) else [right]


def _printf_check(subject: Any, *args: Any, **kwargs: Any) -> None:
    _check_printf(subject)
    _want(_substituted_size(subject, "%", [*args, *kwargs.values()]), "a %-format")


def _format_check(subject: Any, *args: Any, **kwargs: Any) -> None:
    _check_format_spec(subject)
    values = [*args, *kwargs.values()]
    if len(args) == 1 and not kwargs and isinstance(args[0], dict):  # format_map
        values = list(args[0].values())
    _want(_substituted_size(subject, "{", values), "a format")


_METHOD_CHECKS: dict[str, _Check] = {
    "center": _width_check,
    "ljust": _width_check,
    "rjust": _width_check,
    "zfill": _width_check,
    "expandtabs": _expandtabs_check,
    "replace": _replace_check,
    "translate": _translate_check,
    "to_bytes": _to_bytes_check,
    "format": _format_check,
    "format_map": _format_check,
}
_FILTER_CHECKS: dict[str, _Check] = {
    "center": _width_check,
    "indent": _indent_check,
    "wordwrap": _wordwrap_check,
    "replace": _replace_check,
    "format": _printf_check,
    "batch": _count_check("linecount", 0),
    "slice": _count_check("slices", 0),
    "tojson": _tojson_check,
    "sum": _sum_check,
}


def _checked_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` (a Jinja2 filter) with its pre-check and a check of its result. The
    subject is the first argument after what Jinja2 passes itself (context, eval
    context or environment: the filter's ``jinja_pass_arg``)."""
    passed = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0
    check = _FILTER_CHECKS.get(name)

    @functools.wraps(function)
    def filtered(*args: Any, **kwargs: Any) -> Any:
        if name in ("join", "sum") and len(args) > passed:
            # Materialised once (a generator cannot be measured and then joined).
            items = list(args[passed])
            if name == "join":
                separator = kwargs.get("d", args[passed + 1] if len(args) > passed + 1 else "")
                _want(_joined_size(items, separator), "a join")
            args = (*args[:passed], items, *args[passed + 1 :])
        if check is not None and len(args) > passed:
            check(*args[passed:], **kwargs)
        return _check_result(function(*args, **kwargs), f"filter {name!r}")

    return filtered


def _lipsum_check(*args: Any, **kwargs: Any) -> None:
    paragraphs = kwargs.get("n", args[0] if args else 5)
    most = kwargs.get("max", args[3] if len(args) > 3 else 100)
    _want(_as_int(paragraphs) * max(_as_int(most), 0) * 12, "lipsum")


class _SandboxCodeGenerator(CodeGenerator):
    """Jinja2's code generator with ``a ~ b ~ ...`` measured before it is joined (the
    sandbox has no hook for it: it compiles to a plain join): the parts go to the
    sandbox's checked_concat with the join Jinja2 would use."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        else:
            join = "markup_join" if frame.eval_ctx.autoescape else "str_join"
        self.write(f"environment.checked_concat({join}, (")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write("))")


def _checked_join(parts: Any) -> str:
    """The sandbox's ``concat``: what compiled templates join a macro's or a captured
    block's output with (``{% set x %}...{% endset %}``), measured first."""
    items = parts if isinstance(parts, list) else list(parts)
    _want(sum(len(item) for item in items if isinstance(item, str)), "a macro's or block's output")
    return "".join(items)


class TenantSandbox(SandboxedEnvironment):
    """Jinja2's sandbox with a size cap on everything a template builds (module doc)."""

    code_generator_class = _SandboxCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(_checked_join)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.filters = {
            name: _checked_filter(name, function) for name, function in self.filters.items()
        }

    def checked_concat(self, join: Callable[[Any], Any], parts: tuple[Any, ...]) -> Any:
        _want(sum(len(part) for part in parts if isinstance(part, str)), "a '~' concatenation")
        return _check_result(join(parts), "a '~' concatenation")

    def call_binop(self, context: jinja2.runtime.Context, op: str, left: Any, right: Any) -> Any:
        if op == "**":
            if isinstance(right, int | float) and abs(right) > 1000:
                raise TemplateSizeError(f"exponent {right} is too large for a template")
            return _check_result(operator.pow(left, right), "'**'")
        if op == "%":
            _check_printf(left)
            _want(_substituted_size(left, "%", _printf_values(right)), "a %-format")
            return _check_result(operator.mod(left, right), "'%'")
        if op == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                _want(len(left) + len(right), "'+'")
            return _check_result(operator.add(left, right), "'+'")
        count = right if isinstance(left, str | bytes | list | tuple) else left
        item = left if count is right else right
        if isinstance(item, str | bytes | list | tuple) and isinstance(count, int):
            _want(len(item) * count, "a repetition")
        return _check_result(operator.mul(left, right), "'*'")

    def call(
        __self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any
    ) -> Any:
        bound = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if bound is None and hasattr(__obj, "__wrapped__"):  # the sandbox's str.format
            bound = getattr(__obj.__wrapped__, "__self__", None)
        check = _METHOD_CHECKS.get(name) if bound is not None else None
        if check is not None:
            check(bound, *args, **kwargs)
        elif name == "join" and isinstance(bound, str | bytes) and args:
            items = list(args[0])
            _want(_joined_size(items, bound), "a join")
            args = (items, *args[1:])
        elif name == "generate_lorem_ipsum":
            _lipsum_check(*args, **kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(bound, list | dict | set):  # append, extend, update, ... grow it
            _check_result(bound, f"{name}()")
        return _check_result(result, f"{name or 'a call'}()")


@contextmanager
def cpu_budget(seconds: float) -> Iterator[None]:
    """Raise TemplateBudgetError in this thread once it has used `seconds` of CPU time
    (``time.thread_time``) inside the block. Any tracer already set (a debugger,
    coverage) is put back afterwards."""
    deadline = time.thread_time() + seconds
    events = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal events
        events += 1
        if events % _CHECK_EVERY == 0 and time.thread_time() > deadline:
            raise TemplateBudgetError(f"the render used more than {seconds:g}s of CPU time")
        # Line events only in compiled template code, where a loop may run without a
        # call; elsewhere every Python call still comes here (about a third of the cost).
        code = frame.f_code.co_filename
        return tracer if code == "<template>" or code.endswith(".j2") else None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous)


def render_capped(chunks: Iterator[str], max_chars: int, part: str) -> str:
    """Join a template's streamed output (``Template.generate``), stopping past
    `max_chars` characters with TemplateBudgetError."""
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > max_chars:
            raise TemplateBudgetError(
                f"the {part} part is longer than {max_chars:,} characters "
                "(email.template_max_chars)"
            )
        out.append(chunk)
    return "".join(out)
