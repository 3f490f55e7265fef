"""Tenant templates under budgets (size of what they build, output per part, CPU time) at
registration and at send; what they require found by any failure, nested paths
included; blank required values refused; a template's subject under the rule of a given
subject."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crmqueue.workers.email  # noqa: F401 registers the body before any broker is built
from crmqueue import email_rules, tasks
from crmqueue.errors import CrmQueueError, PayloadError, PermanentError
from crmqueue.jobs import Job
from crmqueue.providers.email.render import (
    Budget,
    register_tenant_template,
    render,
    tenant_declaration,
)
from crmqueue.providers.email.sandbox import MAX_BUILT

SUBJECT = "{% block subject %}s{% endblock %}x"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


A_MB = '{% set a = "x" * 1000000 %}'
# Each builds far more than MAX_BUILT through a different operation of the kind.
TOO_BIG = [
    '{{ "x"|center(100000000) }}',
    '{{ "x".center(100000000) }}',
    '{{ "x".ljust(100000000) }}',
    '{{ "x".rjust(100000000, "y") }}',
    '{{ "1".zfill(100000000) }}',
    '{{ "%0100000000d" % 1 }}',
    '{{ "%.100000000f" % 1 }}',
    '{{ "%*d" % (100000000, 1) }}',
    '{{ "%0100000000d"|format(1) }}',
    '{{ "{:>100000000}".format(1) }}',
    '{{ "{:>{w}}".format(1, w=100000000) }}',
    '{% set ns = namespace(s="ab") %}{% for i in range(60) %}'
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    '{% set ns = namespace(s="ab") %}{% for i in range(60) %}'
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    '{% set a = "x" * 100000 %}{% set b = a~a~a~a~a~a~a~a~a~a~a %}{{ b|length }}',
    '{{ (["x" * 100000] * 100000)|join }}',
    '{{ "".join(["x" * 100000] * 100000) }}',
    '{{ ("x" * 900000)|replace("x", "yy") }}',
    '{{ ("x" * 900000).replace("x", "yy") }}',
    '{{ ("\t" * 100000).expandtabs(100) }}',
    '{{ ("x\n" * 100000)|indent(100) }}',
    '{{ ("x " * 100000)|wordwrap(1, wrapstring="y" * 1000) }}',
    "{{ lipsum(100000) }}",
    '{{ (1).to_bytes(100000000, "big") }}',
    "{% set l = [1] %}{% for i in range(60) %}{{ l.extend(l) }}{% endfor %}",
    "{% set ns = namespace(x=3) %}{% for i in range(60) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "{{ 10 ** 100000 }}",
    "{{ [1]|batch(100000000, 0)|list }}",
    "{{ [1]|slice(100000000)|list }}",
    '{{ {"a": 1}|tojson(100000000) }}',
    '{{ (["x" * 10000] * 1000)|sum(start="") }}',
    "{{ ([[1] * 1000] * 10000)|sum(start=[]) }}",
    # One big value used many times: measured before joining, not after.
    A_MB + "{% set b = " + "~".join(["a"] * 300) + " %}{{ b|length }}",
    A_MB + '{{ ("{0}" * 300).format(a)|length }}',
    A_MB + '{{ ("{a}" * 300).format_map({"a": a})|length }}',
    A_MB + '{{ ("%(a)s" * 300) % {"a": a} }}',
    A_MB + '{{ ("%s" * 300) % ((a,) * 300) }}',
    A_MB + '{{ ("%s" * 300)|format(*((a,) * 300)) }}',
    A_MB + "{% macro m() %}" + "{{ a }}" * 300 + "{% endmacro %}{{ m()|length }}",
    A_MB + "{% set x %}" + "{{ a }}" * 300 + "{% endset %}{{ x|length }}",
    A_MB
    + "{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}"
    + "{{ a }}" * 300
    + "{% endcall %}",
]


@pytest.mark.parametrize("html", TOO_BIG)
def test_registration_refuses_what_builds_too_much_quickly_and_in_little_memory(
    tmp_path: Path, html: str
) -> None:
    before = _rss_mb()
    started = time.monotonic()
    with pytest.raises(
        CrmQueueError, match=r"more than a template may build|not allowed|bits|too large"
    ):
        register_tenant_template(tmp_path, "t1", "big", html, SUBJECT)
    assert time.monotonic() - started < 10
    assert _rss_mb() - before < 200  # the samples would take 100 MB to many GB
    assert not (tmp_path / "templates" / "t1" / "big.html.j2").exists()


@pytest.mark.parametrize(
    "html",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ j.bit_length() }}"
        "{% endfor %}{% endfor %}",
    ],
)
def test_registration_refuses_a_template_past_its_cpu_budget(tmp_path: Path, html: str) -> None:
    started = time.thread_time()
    with pytest.raises(CrmQueueError, match=r"more than 0.5s of CPU time"):
        register_tenant_template(
            tmp_path, "t1", "slow", html, SUBJECT, budget=Budget(cpu_seconds=0.5)
        )
    assert time.thread_time() - started < 5


def test_registration_refuses_output_past_the_cap(tmp_path: Path) -> None:
    html = '{% for i in range(100000) %}{{ "x" * 100 }}{% endfor %}'
    with pytest.raises(CrmQueueError, match="HTML part is longer than 1,000,000 characters"):
        register_tenant_template(tmp_path, "t1", "long", html, SUBJECT)
    # The text part and the subject alike, with a budget of one's own.
    with pytest.raises(CrmQueueError, match="text part is longer than 50 characters"):
        register_tenant_template(tmp_path, "t1", "long", "ok", SUBJECT + "y" * 60,
                                 budget=Budget(max_chars=50))  # fmt: skip
    text = "{% block subject %}" + "s" * 60 + "{% endblock %}x"
    with pytest.raises(CrmQueueError, match="subject part is longer than 50 characters"):
        register_tenant_template(tmp_path, "t1", "long", "ok", text, budget=Budget(max_chars=50))


def test_what_is_just_under_the_caps_renders(tmp_path: Path) -> None:
    html = (
        '{{ "x"|center(1000) }}{{ "%05d" % 7 }}{{ "{:>8}".format("r") }}{{ ["a", "b"]|join(",") }}'
        '{{ ("x" * 1000)|length }}{{ 2 ** 10 }}{% set ns = namespace(s="a") %}'
        "{% for i in range(10) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
    )
    directory = register_tenant_template(tmp_path, "t1", "fine", html, SUBJECT)
    rendered = render("fine", {}, tenant_dir=directory)
    assert rendered.html == " " * 499 + "x" + " " * 500 + "00007       ra,b100010241024"
    big = "{{ 'x' * n }}"
    directory = register_tenant_template(tmp_path, "t1", "big", big, SUBJECT, sample={"n": 2})
    assert len(render("big", {"n": MAX_BUILT}, tenant_dir=directory).html) == MAX_BUILT
    with pytest.raises(PermanentError, match="more than a template may build"):
        render("big", {"n": MAX_BUILT + 1}, tenant_dir=directory)


@settings(max_examples=40, deadline=None)
@given(
    op=st.sampled_from(["center", "ljust", "rjust", "zfill"]),
    width=st.integers(min_value=MAX_BUILT + 1, max_value=10**12),
)
def test_every_padding_method_past_the_cap_is_refused_before_it_allocates(
    tmp_path_factory: pytest.TempPathFactory, op: str, width: int
) -> None:
    directory = register_tenant_template(
        tmp_path_factory.mktemp("t"), "t1", "pad", f"{{{{ s.{op}(w) }}}}", SUBJECT,
        sample={"s": "x", "w": 3},
    )  # fmt: skip
    with pytest.raises(PermanentError, match="more than a template may build"):
        render("pad", {"s": "x", "w": width}, tenant_dir=directory)


def test_send_past_the_cpu_budget_is_dead_at_once(make_broker: Any, start_consumer: Any) -> None:
    """The issue's sample: a template fine with its sample (n=2) and deterministic, sent
    with n=100000: one attempt, a permanent failure after the render budget (2 s of CPU),
    not five times the queue's time limit."""
    broker = make_broker({"queues.email.attempts": 5, "queues.email.backoff_seconds": 0.01})
    html = "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}"
    register_tenant_template(Path(broker.settings.files.dir), "t1", "loop", html, SUBJECT,
                             sample={"n": 2})  # fmt: skip
    start_consumer(broker, ["email"])
    started = time.monotonic()
    job = tasks.send_email(tenant_id="t1", to="a@example.com", template="loop",
                           context={"n": 100000})  # fmt: skip
    info = Job(job.id, "email").wait(timeout=60)
    assert info.state == "dead"
    assert info.attempts == 1
    assert [e["type"] for e in info.errors] == ["PermanentError"]
    assert (
        "went past its budget: the render used more than 2s of CPU time"
        in (info.errors[0]["message"])
    )
    assert time.monotonic() - started < 30


def test_send_past_the_output_cap_is_dead_at_once_and_writes_nothing(
    make_broker: Any, start_consumer: Any
) -> None:
    broker = make_broker({"queues.email.attempts": 5, "queues.email.backoff_seconds": 0.01})
    html = "{% for i in range(n) %}{{ 'x' * 100 }}{% endfor %}"
    register_tenant_template(Path(broker.settings.files.dir), "t1", "long", html, SUBJECT,
                             sample={"n": 2})  # fmt: skip
    start_consumer(broker, ["email"])
    job = tasks.send_email(tenant_id="t1", to="a@example.com", template="long",
                           context={"n": 100000})  # fmt: skip
    info = Job(job.id, "email").wait(timeout=60)
    assert (info.state, info.attempts) == ("dead", 1)
    assert "HTML part is longer than 1,000,000 characters" in info.errors[0]["message"]
    outbox = Path(broker.settings.email.outbox_dir)
    assert not outbox.exists() or not any(outbox.iterdir())


def test_the_budget_puts_back_a_tracer_already_set(tmp_path: Path) -> None:
    import sys

    def tracer(frame: Any, event: str, arg: Any) -> None:
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        directory = register_tenant_template(tmp_path, "t1", "ok", "{{ a }}", SUBJECT)
        render("ok", {"a": "b"}, tenant_dir=directory)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)


# --------------------------------------------------------------------------- required


@pytest.mark.parametrize(
    ("html", "sample", "required"),
    [
        # range(StrictUndefined) is a TypeError, not an UndefinedError: still required.
        ("{% for i in range(n) %}{{ i }}{% endfor %}", {"n": 2}, ["n"]),
        ("{{ total|round(1) }}", {"total": 2.5}, ["total"]),
        ("{{ 10 / rate }}", {"rate": 2}, ["rate"]),
        ("{{ items|sort|first }}", {"items": [1]}, ["items"]),
        # Nested reads of a stand-in and of a sample mapping.
        ("{{ user.first_name }}", None, ["user", "user.first_name"]),
        ("{{ user['first_name'] }} {{ user.company.name }}", None,
         ["user", "user.company", "user.company.name", "user.first_name"]),
        ("{{ user.firstName }}", {"user": {"first_name": "A"}}, ["user", "user.first_name"]),
        ("{{ order.total|round }}", {"order": {"total": 2.5, "note": "n"}},
         ["order", "order.total"]),
        # Optional ones stay optional.
        ("{% if user is defined %}{{ user.name }}{% endif %}", None, []),
        ("{{ user.name if user.name is defined else 'you' }}", None, ["user"]),
    ],
)  # fmt: skip
def test_required_is_whatever_the_render_fails_without(
    tmp_path: Path, html: str, sample: dict[str, Any] | None, required: list[str]
) -> None:
    directory = register_tenant_template(tmp_path, "t1", "t", html, SUBJECT, sample=sample)
    declaration = tenant_declaration(directory, "t")
    assert declaration is not None
    assert sorted(declaration.required) == required


def test_enqueue_checks_required_and_nested_paths(broker: Any) -> None:
    files = Path(broker.settings.files.dir)
    register_tenant_template(files, "t1", "loop", "{% for i in range(n) %}.{% endfor %}",
                             SUBJECT, sample={"n": 2})  # fmt: skip
    with pytest.raises(PayloadError, match=r"template 'loop' needs 'n'$"):
        tasks.send_email(tenant_id="t1", to="a@example.com", template="loop", context={})
    register_tenant_template(files, "t1", "hi", "Hi {{ user.first_name }}", SUBJECT)
    for context in ({"user": {}}, {"user": "Ann"}, {"user": {"first_name": " "}}, {}):
        with pytest.raises(
            PayloadError, match=r"needs .*'user.first_name' \(or 'user.firstName'\)"
        ):
            tasks.send_email(tenant_id="t1", to="a@example.com", template="hi", context=context)
    for context in ({"user": {"firstName": "Ann"}}, {"user": {"first_name": "Ann"}}):
        tasks.send_email(tenant_id="t1", to="a@example.com", template="hi", context=context)


def test_a_nested_read_the_enqueue_check_cannot_see_is_dead_at_once(
    make_broker: Any, start_consumer: Any
) -> None:
    """Through a list, the enqueue check cannot follow: the worker fails the job
    permanently on its first attempt."""
    broker = make_broker({"queues.email.attempts": 5, "queues.email.backoff_seconds": 0.01})
    register_tenant_template(Path(broker.settings.files.dir), "t1", "list",
                             "{% for u in users %}{{ u.name }}{% endfor %}", SUBJECT,
                             sample={"users": [{"name": "a"}]})  # fmt: skip
    start_consumer(broker, ["email"])
    job = tasks.send_email(tenant_id="t1", to="a@example.com", template="list",
                           context={"users": [{}]})  # fmt: skip
    info = Job(job.id, "email").wait(timeout=30)
    assert (info.state, info.attempts) == ("dead", 1)
    assert "has no attribute 'name'" in info.errors[0]["message"]


@pytest.mark.parametrize("blank", ["", " ", "\t", "\u00a0", "\u3000 "])
def test_blank_required_values_count_as_missing(broker: Any, blank: str) -> None:
    for template, context in [
        ("password-reset", {"reset_url": blank}),
        ("password-reset", {"resetUrl": blank}),
        ("contact-created", {"contact_name": blank}),
        ("export-ready", {"entity_type": "contacts", "download_url": blank}),
    ]:
        with pytest.raises(PayloadError, match="needs"):
            tasks.send_email(tenant_id="t1", to="a@example.com", template=template,
                             context=context)  # fmt: skip
    # A blank under one spelling, the value under the other: given.
    tasks.send_email(tenant_id="t1", to="a@example.com", template="password-reset",
                     context={"reset_url": blank, "resetUrl": "https://x.example/r"})  # fmt: skip
    # The worker's check too (a job enqueued before this rule, or without the check).
    with pytest.raises(PermanentError, match="needs 'reset_url'"):
        render("password-reset", {"reset_url": blank})


def test_missing_variables_nested_and_blank() -> None:
    declaration = email_rules.Declaration(("a", "b.c_d"), ())
    assert email_rules.missing_variables(declaration, {"a": 0, "b": {"cD": "x"}}) == []
    assert email_rules.missing_variables(declaration, {"a": " ", "b": {"c_d": None}}) == [
        "a",
        "b.c_d",
    ]
    assert email_rules.missing_variables(declaration, {"a": False, "b": ["c_d"]}) == ["b.c_d"]


# --------------------------------------------------------------------------- subjects


@pytest.mark.parametrize("char", ["\x07", "\x00", "\x1b", "\x7f", "\x08", "\ud83d"])
def test_a_rendered_subject_follows_the_rule_of_a_given_one(tmp_path: Path, char: str) -> None:
    """A given subject with a control character is refused at enqueue; a subject the
    template builds with one fails permanently (refused, not stripped: the same rule).
    Line breaks and tabs a template's layout puts in its subject are folded to spaces."""
    text = "{% block subject %}Hi {{ name }}{% endblock %}x"
    directory = register_tenant_template(tmp_path, "t1", "hi", "x", text)
    with pytest.raises(PermanentError, match=r"single line|surrogate"):
        render("hi", {"name": f"a{char}b"}, tenant_dir=directory)
    for space in ("\r\n\t", "\x85", "\u2028", "\x1f"):
        assert render("hi", {"name": f"a{space}b"}, tenant_dir=directory).subject == "Hi a b"


# Operations that build strings or lists, with a size argument; composed at random.
_OPS = [
    "({x}|center({n}))", "({x}.ljust({n}))", "({x}.zfill({n}))", "({x} * {n})",
    "({x} ~ {x})", "({x} + {x})", "((({x},) * {n})|join)", "({x}|indent({n}))",
    "('%0{n}d' % 1)", "('{{:>{n}}}'.format({x}))", "({x}|replace('x', {x}))",
    "(([{x}] * {n})|join('-'))", "({x}|wordwrap(1, wrapstring={x}))", "({x}|string * 2)",
]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(_OPS), st.integers(min_value=0, max_value=10**10)),
        min_size=1, max_size=3,
    )
)  # fmt: skip
def test_composed_operations_stay_within_the_caps(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]
) -> None:
    """Property: any composition of building operations, with any sizes, is refused
    quickly or renders within the output cap, and never takes much memory."""
    expr = "'x'"
    for op, n in ops:
        expr = op.format(x=expr, n=n)
    before = _rss_mb()
    started = time.monotonic()
    try:
        directory = register_tenant_template(
            tmp_path_factory.mktemp("t"), "t1", "c", "{{ " + expr + " }}", SUBJECT
        )
    except CrmQueueError as exc:
        assert "sample values" in str(exc) or "does not" in str(exc)
    else:
        assert len(render("c", {}, tenant_dir=directory).html) <= 1_000_000
    assert time.monotonic() - started < 20
    assert _rss_mb() - before < 300
