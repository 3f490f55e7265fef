"""What the worker cannot send is refused at enqueue: built-in template variables of the
wrong kind, more recipients than the configured provider takes, and a configured sender
address no payload could have."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crmqueue.workers.email  # noqa: F401 registers the body before any broker is built
from crmqueue import email_rules, tasks
from crmqueue.config import EmailSettings
from crmqueue.errors import PayloadError, PermanentError
from crmqueue.jobs import Job
from crmqueue.providers.email import OutgoingEmail, get_provider
from crmqueue.providers.email.base import UnsupportedFeature
from crmqueue.providers.email.render import BUILTIN_TEMPLATES, render

REQUIRED = {
    "welcome": {},
    "password-reset": {"reset_url": "https://app.example.com/r"},
    "contact-created": {"contact_name": "Ann"},
    "activity-reminder": {"activity_title": "Call", "due_at": "2025-01-21 12:00"},
    "lead-assigned": {"lead_name": "Acme"},
    "export-ready": {"entity_type": "contacts", "download_url": "/files/x.csv"},
    "import-completed": {"entity_type": "contacts", "created": 3},
    "report-ready": {"report_name": "Q1", "download_url": "https://x.example/q1.pdf"},
    "notification": {"title": "New lead", "message": "Acme wants a demo"},
}

# JSON values of every shape a producer could send.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6,
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template=st.sampled_from(BUILTIN_TEMPLATES),
    variable_index=st.integers(min_value=0, max_value=20),
    spelling=st.sampled_from([0, 1]),
    value=json_values,
)
def test_every_value_a_builtin_accepts_renders(
    template: str, variable_index: int, spelling: int, value: Any
) -> None:
    """Property: whatever value of whatever shape goes into any variable of any built-in
    (either spelling), it is refused by the enqueue check or renders; never accepted
    and then failing in the worker."""
    declaration = email_rules.builtin_declarations()[template]
    names = [name for name, _ in declaration.types]
    name = email_rules.spellings(names[variable_index % len(names)])[spelling]
    context = {**REQUIRED[template], name: value}
    if email_rules.missing_variables(declaration, context) or email_rules.type_problems(
        declaration, context
    ):
        return
    rendered = render(template, context)
    assert rendered.subject.strip()


@pytest.mark.parametrize(
    ("template", "context", "message"),
    [
        ("welcome", {"product_name": [1]}, "'product_name' must be a text or a number on one"),
        ("welcome", {"productName": {"a": 1}}, "'productName' must be"),
        ("welcome", {"first_name": "Ann\nBcc: x"}, "'first_name' must be a text or a number on"),
        ("welcome", {"first_name": "Ann\x07"}, "on one line"),
        ("welcome", {"login_url": "javascript:alert(1)"}, "'login_url' must be an http(s) URL"),
        ("welcome", {"loginUrl": "https://x.example/a b"}, "'loginUrl' must be an http(s) URL"),
        ("welcome", {"login_url": "//evil.example/"}, "'login_url' must be"),
        ("welcome", {"login_url": 5}, "'login_url' must be"),
        ("password-reset", {"reset_url": "reset"}, "'reset_url' must be an http(s) URL"),
        ("export-ready", {**REQUIRED["export-ready"], "warnings": 5},
         "'warnings' must be a list of texts or numbers, not 5"),
        ("export-ready", {**REQUIRED["export-ready"], "warnings": "cut"}, "'warnings' must be"),
        ("export-ready", {**REQUIRED["export-ready"], "warnings": [{"row": 1}]}, "'warnings'"),
        ("import-completed", {"entity_type": "contacts", "created": [1]}, "'created' must be"),
        ("activity-reminder", {"activity_title": "A\r\nB", "due_at": "x"}, "'activity_title'"),
    ],
)  # fmt: skip
def test_builtin_variables_of_the_wrong_kind_are_refused_at_enqueue(
    broker: Any, template: str, context: dict[str, Any], message: str
) -> None:
    with pytest.raises(PayloadError, match=f"context: template '{template}': .*{_re(message)}"):
        tasks.send_email(tenant_id="t1", to="a@example.com", template=template, context=context)


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_the_issue_samples_now_send(broker: Any, start_consumer: Any) -> None:
    """product_name 5: the layout takes a number now (it measured its length); a list of
    warnings and numbers where text goes are accepted and sent."""
    start_consumer(broker, ["email"])
    jobs = [
        tasks.send_email(tenant_id="t1", to="a@example.com", template="welcome",
                         context={"product_name": 5, "first_name": 7}),
        tasks.send_email(tenant_id="t1", to="a@example.com", template="export-ready",
                         context={**REQUIRED["export-ready"], "warnings": ["row 2: cut", 3],
                                  "rows": 10, "format": 1}),
    ]  # fmt: skip
    for job in jobs:
        assert Job(job.id, "email").wait(timeout=30).state == "completed"


# --------------------------------------------------------------------------- recipients


@pytest.mark.parametrize(
    ("provider", "limit"),
    [("resend", 50), ("ses", 50), ("smtp", 100), ("sendgrid", 1000), ("mailgun", 1000),
     ("outbox", 1000)],
)  # fmt: skip
def test_recipients_past_the_provider_limit_are_refused_at_enqueue(
    make_broker: Any, provider: str, limit: int
) -> None:
    make_broker({"email.provider": provider})
    addresses = [f"u{i}@example.com" for i in range(limit + 1)]
    split = {"to": addresses[:1], "cc": addresses[1 : limit // 2], "bcc": addresses[limit // 2 :]}
    for fields in ({"to": addresses}, split, {"to": addresses[:1], "bcc": addresses[1:]}):
        with pytest.raises(PayloadError, match=f"recipients; at most {limit} .*{provider}"):
            tasks.send_email(tenant_id="t1", template="welcome", **fields)
    tasks.send_email(tenant_id="t1", template="welcome", to=addresses[:1], cc=addresses[1:limit])


@pytest.mark.parametrize("provider", ["resend", "ses", "smtp", "sendgrid", "mailgun"])
def test_the_provider_refuses_too_many_recipients_itself(provider: str) -> None:
    """A job enqueued under another provider's limit: refused before any request."""
    limit = email_rules.recipient_limit(provider)
    email = OutgoingEmail(
        from_="a@example.com", to=["b@example.com"], subject="s", text="t", html="<p>t</p>",
        bcc=[f"u{i}@example.com" for i in range(limit)],
    )  # fmt: skip
    with pytest.raises(UnsupportedFeature, match=f"at most {limit} recipients"):
        get_provider(EmailSettings(provider=provider)).send(email)
    assert isinstance(UnsupportedFeature("x"), PermanentError)


# --------------------------------------------------------------------------- from_address


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("jürgen@example.com", "not ASCII"),
        ("not an address", "not a valid email address"),
        ("a@b.example\r\nBcc: x@y.example", "single line"),
        ("Sales <sales@example.com", "not a valid email address"),
        ("a@b..example", "not a valid email address"),
    ],
)
def test_config_check_refuses_a_from_address_no_payload_could_have(
    tmp_path: Path, value: str, reason: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crmqueue", "config", "check"], cwd=tmp_path, capture_output=True,
        text=True, env={"PATH": "/usr/bin:/bin", "EMAIL_FROM": value}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    assert "email.from_address" in result.stderr and reason in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "value",
    ["CRM <noreply@localhost>", "Jürgen Müller <j@bücher.example>", "ops@example.com",
     '"Sales, EU" <sales@example.com>'],
)  # fmt: skip
def test_good_from_addresses_are_taken(value: str) -> None:
    assert EmailSettings(from_address=value).from_address
