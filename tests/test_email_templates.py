"""Email template variables: each template's declaration (built-in manifest, tenant
declaration recorded at registration) checked at enqueue through every face, context
found under either spelling at any depth, tenant templates checked when registered, and
render failures permanent at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import crmqueue.workers.email  # registers the body before any broker is built
from crmqueue import email_rules, jobs, tasks
from crmqueue.errors import CrmQueueError, PayloadError, PermanentError
from crmqueue.jobs import Job
from crmqueue.payloads import EmailPayload, validate_payload
from crmqueue.providers.email import get_provider, outbox
from crmqueue.providers.email.render import (
    BUILTIN_TEMPLATES,
    PROVIDED,
    builtin_environment,
    register_tenant_template,
    render,
    template_variables,
    tenant_declaration,
    tenant_template_dir,
)

# The original system's three email examples (shared/original-examples.json), as sent.
ORIGINAL_EMAILS = [
    {"tenantId": "tenant-1", "to": "user@example.com", "subject": "Welcome to CRMFlow",
     "template": "welcome", "context": {"firstName": "John"}},
    {"tenantId": "tenant-123", "to": "user@example.com", "subject": "Welcome!",
     "template": "welcome",
     "context": {"firstName": "John", "loginUrl": "https://app.example.com/login"}},
    {"tenantId": "tenant-123", "to": "user@example.com", "subject": "Reset your password",
     "template": "password-reset",
     "context": {"resetUrl": "https://app.example.com/reset?token=xyz"}},
]  # fmt: skip


def _variables(name: str) -> set[str]:
    env = builtin_environment()
    assert env.loader is not None
    found: set[str] = set()
    for suffix in (".html.j2", ".txt.j2"):
        source = env.loader.get_source(env, name + suffix)[0]
        found |= template_variables(env.parse(source))
    return found - PROVIDED


# --------------------------------------------------------------------------- declarations


def test_every_builtin_template_is_declared() -> None:
    assert set(email_rules.builtin_declarations()) == set(BUILTIN_TEMPLATES)


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_declaration_matches_what_the_template_reads(name: str) -> None:
    declaration = email_rules.builtin_declarations()[name]
    assert _variables(name) == {*declaration.required, *declaration.optional}
    assert not set(declaration.required) & set(declaration.optional)
    values = {var: f"<{var}>" for var in declaration.required}
    # Only the required ones: every optional one has its fallback.
    rendered = render(name, values)
    for var in declaration.required:
        assert f"<{var}>" in rendered.text or f"<{var}>" in rendered.subject
    # Leaving out any required one fails, naming it (and is refused at enqueue).
    for var in declaration.required:
        with pytest.raises(PermanentError, match=f"needs '{var}'"):
            render(name, {k: v for k, v in values.items() if k != var})
        assert email_rules.missing_variables(declaration, {}) == list(declaration.required)


def test_optional_greeting_falls_back_to_hi_there() -> None:
    reset = "https://crm.example.com/r"
    assert "Hi there, we received" in render("password-reset", {"reset_url": reset}).text
    assert "Hi Ann, we received" in render("password-reset", {"reset_url": reset,
                                                              "firstName": "Ann"}).text  # fmt: skip
    welcome = render("welcome", {})
    assert welcome.subject == "Welcome to CRM!"
    assert "Welcome!" in welcome.text and "Sign in" not in welcome.text
    # None counts as not given: the fallback, not "None".
    assert "Hi there," in render("report-ready", {"report_name": "Q1", "download_url": "/d",
                                                  "first_name": None}).text  # fmt: skip


def test_spellings() -> None:
    assert email_rules.spellings("first_name") == ("first_name", "firstName")
    assert email_rules.spellings("firstName") == ("first_name", "firstName")
    assert email_rules.spellings("loginURL") == ("login_url", "loginUrl")
    assert email_rules.spellings("url") == ("url", "url")


# --------------------------------------------------------------------------- the original


@pytest.mark.parametrize("payload", ORIGINAL_EMAILS)
def test_the_original_email_examples_validate_and_send(payload: dict[str, Any], tmp_path: Path,
                                                       make_broker: Any) -> None:  # fmt: skip
    broker = make_broker({"email.outbox_dir": str(tmp_path / "outbox")})
    job = validate_payload(EmailPayload, payload)
    email = crmqueue.workers.email.build_email(job, broker.settings, "key", "job-1")
    assert email.subject == payload["subject"]
    context = payload["context"]
    if "loginUrl" in context:
        assert context["loginUrl"] in email.text and context["loginUrl"] in email.html
    if "resetUrl" in context:
        assert context["resetUrl"] in email.text
        assert "Hi there," in email.text
    if "firstName" in context:
        assert "Welcome, John!" in email.text
    outbox.clear()
    assert get_provider(broker.settings.email).send(email).message_id == email.message_id


# --------------------------------------------------------------------------- at enqueue


def test_missing_required_variable_is_refused_by_every_face(broker: Any, tmp_path: Path) -> None:
    bad = {"tenantId": "t1", "to": "a@example.com", "template": "password-reset",
           "context": {"firstName": "Ann"}}  # fmt: skip
    expected = r"context: template 'password-reset' needs 'reset_url' \(or 'resetUrl'\)"
    with pytest.raises(PayloadError, match=expected):
        tasks.send_email(tenant_id="t1", to="a@example.com", template="password-reset",
                         context={"firstName": "Ann"})  # fmt: skip
    with pytest.raises(PayloadError, match=expected):
        tasks.enqueue("email", bad)
    with pytest.raises(PayloadError, match=r"1\.context: template 'password-reset' needs"):
        tasks.enqueue_many("email", [{**bad, "context": {"resetUrl": "/r"}}, bad])
    # None is not a value.
    with pytest.raises(PayloadError, match="needs 'reset_url'"):
        tasks.enqueue("email", {**bad, "context": {"reset_url": None}})
    assert jobs.stats("email")["waiting"] == 0  # nothing was enqueued
    # Either spelling is present.
    for context in ({"resetUrl": "/r"}, {"reset_url": "/r"}):
        tasks.enqueue("email", {**bad, "context": context})


def test_unknown_template_is_refused_at_enqueue(broker: Any) -> None:
    with pytest.raises(PayloadError, match="template 'nope' is neither built in nor registered"):
        tasks.send_email(tenant_id="t1", to="a@example.com", template="nope")


def test_cli_enqueue_refuses_a_missing_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMQUEUE_", "REDIS_"))}
    env.pop("EMAIL_PROVIDER", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crmqueue", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    refused = cli("enqueue", "email", "--json", json.dumps(
        {"tenantId": "t1", "to": "a@example.com", "template": "password-reset", "context": {}}
    ))  # fmt: skip
    assert refused.returncode != 0
    assert "needs 'reset_url' (or 'resetUrl')" in refused.stderr
    accepted = cli("enqueue", "email", "--json", json.dumps(ORIGINAL_EMAILS[2]))
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip()


# --------------------------------------------------------------------------- spellings


NESTED_HTML = (
    "<p>{{ contact.first_name }} {{ contact['lastName'] }} of {{ contact.company.legal_name }}"
    "</p>{% for item in line_items %}<li>{{ item.unit_price }}/{{ item.productName }}</li>"
    "{% endfor %}"
)
NESTED_TEXT = (
    "{% block subject %}Order for {{ contact.firstName }}{% endblock %}"
    "{{ contact.first_name }}: {% for item in lineItems %}{{ item.unit_price }} {% endfor %}"
)


@pytest.mark.parametrize(
    "context",
    [
        {"contact": {"firstName": "Ann", "lastName": "Lee",
                     "company": {"legalName": "Acme"}},
         "lineItems": [{"unitPrice": 5, "productName": "Pen"},
                       {"unitPrice": 7, "productName": "Ink"}]},
        {"contact": {"first_name": "Ann", "last_name": "Lee",
                     "company": {"legal_name": "Acme"}},
         "line_items": [{"unit_price": 5, "product_name": "Pen"},
                        {"unit_price": 7, "product_name": "Ink"}]},
    ],
)  # fmt: skip
def test_context_is_found_under_either_spelling_at_any_depth(
    tmp_path: Path, context: dict[str, Any]
) -> None:
    directory = register_tenant_template(tmp_path, "t1", "order", NESTED_HTML, NESTED_TEXT)
    rendered = render("order", context, tenant_dir=directory)
    assert rendered.subject == "Order for Ann"
    assert "<p>Ann Lee of Acme</p><li>5/Pen</li><li>7/Ink</li>" in rendered.html
    assert "Ann: 5 7" in rendered.text


def test_nested_mappings_answer_either_spelling_but_show_only_what_was_given(
    tmp_path: Path,
) -> None:
    html = (
        '{% extends "_layout.html.j2" %}{% block content %}'
        "{% for key, value in deal.items() %}[{{ key }}={{ value }}]{% endfor %}"
        "{{ deal.close_date }}/{{ deal['closeDate'] }}/{{ deal|tojson }}{% endblock %}"
    )
    text = "{% block subject %}Deal {{ deal.closeDate }}{% endblock %}{{ deal.close_date }}"
    sample = {"deal": {"closeDate": "2025-01-01"}}
    directory = register_tenant_template(tmp_path, "t1", "deal", html, text, sample=sample)
    for given, other in (("closeDate", "close_date"), ("close_date", "closeDate")):
        rendered = render("deal", {"deal": {given: "2025-01-01"}}, tenant_dir=directory)
        assert rendered.subject == "Deal 2025-01-01"
        assert f"[{given}=2025-01-01]2025-01-01/2025-01-01/" in rendered.html
        assert other not in rendered.html  # the loop and |tojson see the key once
    # A built-in that prints what it was given prints it as given.
    rendered = render(
        "export-ready",
        {"entity_type": "contacts", "download_url": "https://x.example/f",
         "warnings": [{"rowNumber": 3}]},
    )  # fmt: skip
    assert "row_number" not in rendered.text and "rowNumber" in rendered.text


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>Hi {{ name }}</p>", "Hi {{ name }}"),
        ('{% include "welcome.html.j2" %}', '{% include "welcome.txt.j2" %}'),
        ('{% extends "_layout.html.j2" %}', '{% extends "_layout.txt.j2" %}'),
    ],
)
def test_a_tenant_template_without_a_subject_is_refused_when_registered(
    tmp_path: Path, html: str, text: str
) -> None:
    with pytest.raises(CrmQueueError, match="has no subject: give it"):
        register_tenant_template(tmp_path, "t1", "nolayout", html, text)


# --------------------------------------------------------------------------- tenant templates


def test_registration_records_what_the_template_needs_and_enqueue_checks_it(
    broker: Any, tmp_path: Path
) -> None:
    files = Path(broker.settings.files.dir)
    html = ('{% extends "_layout.html.j2" %}{% block content %}<p>{{ offer }} for '
            '{% if first_name is defined %}{{ first_name }}{% endif %}'
            "{{ code|default('none') }}</p>{% endblock %}")  # fmt: skip
    text = "{% block subject %}Your offer: {{ offer }}{% endblock %}{{ offer }}"
    directory = register_tenant_template(files, "t1", "promo", html, text)
    declaration = tenant_declaration(directory, "promo")
    assert declaration == email_rules.Declaration(("offer",), ("code", "first_name"))
    with pytest.raises(PayloadError, match="template 'promo' needs 'offer'"):
        tasks.send_email(tenant_id="t1", to="a@example.com", template="promo")
    tasks.send_email(tenant_id="t1", to="a@example.com", template="promo",
                     context={"offer": "10%"})  # fmt: skip
    # Another tenant does not have it.
    with pytest.raises(PayloadError, match="neither built in nor registered for tenant 't2'"):
        tasks.send_email(tenant_id="t2", to="a@example.com", template="promo",
                         context={"offer": "10%"})  # fmt: skip
    # A tenant's template with a built-in's name brings its own declaration.
    register_tenant_template(files, "t1", "password-reset", "<p>{{ link }}</p>",
                             "{% block subject %}Reset{% endblock %}{{ link }}")  # fmt: skip
    with pytest.raises(PayloadError, match="needs 'link'"):
        tasks.send_email(tenant_id="t1", to="a@example.com", template="password-reset",
                         context={"reset_url": "/r"})  # fmt: skip


@pytest.mark.parametrize(
    ("html", "message"),
    [
        ("{{ ''.__class__ }}", "access to '__class__' is not allowed"),
        ("{{ x.__init__.__globals__ }}", "access to '__globals__' is not allowed"),
        ("{{ x['__class__'] }}", "access to '__class__' is not allowed"),
        ("{{ x|attr('__class__') }}", "access to '__class__' is not allowed"),
        ("{{ x|attr('__cla' ~ 'ss__') }}", "does not render with sample values"),
        ("{% for i in range(100000000) %}{{ i }}{% endfor %}", "Range too big"),
        ("{{ 'x' * 1000000000 }}", "more than a template may build"),
        ("{{ 10 ** 100000 }}", "too large"),
        ("{% if %}", "html template 'bad', line 1"),
        ("{{ x|no_such_filter }}", "html template 'bad', line 1: No filter named 'no_such_filter'"),
        ("{% if x is no_such_test %}{% endif %}", "No test named 'no_such_test'"),
        ("{% extends 'missing.html.j2' %}", "missing.html.j2"),
    ],
)
def test_registration_refuses_what_would_fail_at_send(
    tmp_path: Path, html: str, message: str
) -> None:
    with pytest.raises(CrmQueueError, match=message):
        register_tenant_template(tmp_path, "t1", "bad", html, "{% block subject %}s{% endblock %}x")
    assert not (tmp_path / "templates" / "t1" / "bad.html.j2").exists()


def test_registration_takes_sample_values_for_what_stand_ins_cannot_be(tmp_path: Path) -> None:
    html = "{% for label, amount in totals %}{{ label }}: {{ amount|round(2) }}{% endfor %}"
    text = "{% block subject %}Totals{% endblock %}{{ totals|length }}"
    with pytest.raises(CrmQueueError, match="give realistic sample values"):
        register_tenant_template(tmp_path, "t1", "totals", html, text)
    directory = register_tenant_template(
        tmp_path, "t1", "totals", html, text, sample={"totals": [["net", 1.234]]}
    )
    assert tenant_declaration(directory, "totals") == email_rules.Declaration(("totals",), ())
    # Samples in the original's spelling serve a template written in snake_case.
    html = "{% for item in line_items %}{{ item.unit_price|round(1) }}{% endfor %}"
    directory = register_tenant_template(
        tmp_path, "t1", "items", html, "{% block subject %}x{% endblock %}x",
        sample={"lineItems": [{"unitPrice": 2.5}]},
    )  # fmt: skip
    assert tenant_declaration(directory, "items") == email_rules.Declaration(("line_items",), ())
    assert render("totals", {"totals": [["net", 9.999]]}, tenant_dir=directory).html == (
        "net: 10.0"
    )


@pytest.mark.parametrize(
    ("html", "error"),
    [
        ("{% for i in range(100000000) %}{{ i }}{% endfor %}", "OverflowError"),
        ("{{ ''.__class__ }}", "is not allowed"),
        ("{{ 1 / zero }}", "ZeroDivisionError"),
        ("{% if %}", "failed"),
        ("{{ missing_thing }}", "'missing_thing' is undefined"),
        ("{{ 'x'|center(100000000) }}", "more than a template may build"),
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
         "more than 2s of CPU time"),
    ],
)  # fmt: skip
def test_a_template_that_bypassed_registration_kills_its_job_at_once(
    make_broker: Any, start_consumer: Any, html: str, error: str
) -> None:
    broker = make_broker({"queues.email.attempts": 5, "queues.email.backoff_seconds": 0.01})
    directory = tenant_template_dir(Path(broker.settings.files.dir), "t1")
    directory.mkdir(parents=True)
    (directory / "raw.html.j2").write_text(html)
    (directory / "raw.txt.j2").write_text("{% block subject %}s{% endblock %}x")
    start_consumer(broker, ["email"])
    job = tasks.send_email(tenant_id="t1", to="a@example.com", template="raw",
                           context={"zero": 0})  # fmt: skip
    info = Job(job.id, "email").wait(timeout=20)
    assert info.state == "dead"
    assert info.attempts == 1
    assert [e["type"] for e in info.errors] == ["PermanentError"]
    assert error in info.errors[0]["message"]


def test_cli_template_add_checks_and_reports_what_the_template_needs(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from crmqueue.cli import main

    (tmp_path / "bad.html").write_text("<p>{{ ''.__class__ }}</p>")
    (tmp_path / "ok.html").write_text(
        "{% for label, n in totals %}{{ label }} {{ n }}{% endfor %} {{ greeting|default('Hi') }}"
    )
    (tmp_path / "t.txt").write_text("{% block subject %}Totals{% endblock %}{{ totals|length }}")
    env = {"CRMQUEUE_FILES__DIR": str(tmp_path / "files")}
    runner = CliRunner()
    base = ["email", "template-add", "--tenant", "t1", "--text", str(tmp_path / "t.txt")]
    refused = runner.invoke(main, [*base, "bad", "--html", str(tmp_path / "bad.html")], env=env)
    assert refused.exit_code == 1
    assert "access to '__class__' is not allowed" in refused.output
    needs_sample = runner.invoke(main, [*base, "ok", "--html", str(tmp_path / "ok.html")], env=env)
    assert needs_sample.exit_code == 1
    assert "give realistic sample values" in needs_sample.output
    added = runner.invoke(
        main,
        [*base, "ok", "--html", str(tmp_path / "ok.html"), "--sample", '{"totals": [["a", 1]]}'],
        env=env,
    )
    assert added.exit_code == 0, added.output
    assert "required variables: totals; optional: greeting" in added.output
