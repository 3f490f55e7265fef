"""Email templates, MIME building, the outbox provider, the email body end to end, and
the `crmqueue email` commands."""

from __future__ import annotations

import json
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import crmqueue.workers.email  # registers the body before any broker is built
from crmqueue import tasks
from crmqueue.cli import main
from crmqueue.config import load_settings
from crmqueue.errors import PayloadError, PermanentError, RetryableError
from crmqueue.jobs import Job
from crmqueue.payloads import EmailPayload, validate_payload
from crmqueue.providers.email import get_provider, outbox
from crmqueue.providers.email.message import OutgoingEmail
from crmqueue.providers.email.render import BUILTIN_TEMPLATES, render

EVIL = "<script>alert('x')</script> & \"co\""

SAMPLES: dict[str, dict[str, Any]] = {
    "welcome": {"first_name": EVIL, "login_url": "https://crm.example.com/login"},
    "password-reset": {"first_name": EVIL, "reset_url": "https://crm.example.com/r?t=1&u=2"},
    "contact-created": {
        "contact_name": EVIL,
        "contact_email": "jane@example.com",
        "created_by": "Ann",
        "contact_url": "https://crm.example.com/c/1",
    },
    "activity-reminder": {
        "first_name": "Ann",
        "activity_title": EVIL,
        "due_at": "2026-12-01 10:00",
        "activity_url": "https://crm.example.com/a/1",
    },
    "lead-assigned": {"first_name": "Ann", "lead_name": EVIL, "assigned_by": "Bob"},
    "export-ready": {
        "first_name": EVIL,
        "entity_type": "contacts",
        "download_url": "https://crm.example.com/d/1",
        "expires_at": "2026-12-02",
    },
    "import-completed": {
        "first_name": EVIL,
        "entity_type": "leads",
        "created": 10,
        "updated": 2,
        "skipped": 1,
        "failed": 0,
    },
    "report-ready": {
        "first_name": "Ann",
        "report_name": EVIL,
        "download_url": "https://crm.example.com/r/1",
    },
    "notification": {
        "first_name": "Ann",
        "title": "New lead",
        "message": EVIL,
        "action_url": "https://crm.example.com/leads/7",
    },
}


def email_settings(tmp_path: Path, **overrides: Any) -> Any:
    base = {"email.outbox_dir": str(tmp_path / "outbox"), "files.dir": str(tmp_path / "files")}
    base.update(overrides)
    return load_settings(config_file=None, overrides=base, environ={})


def sample_email(**overrides: Any) -> OutgoingEmail:
    fields: dict[str, Any] = {
        "from_": "Jürgen Müller <jurgen@example.com>",
        "to": ["Zoë Ångström <zoe@example.com>"],
        "cc": ["cc@example.com"],
        "bcc": ["hidden@example.com"],
        "reply_to": "replies@example.com",
        "subject": "Grüße aus Köln – über 10 €",
        "text": "Hallo Zoë, 10 €",
        "html": "<p>Hallo Zoë, 10 &euro;</p>",
        "headers": {"X-Campaign": "spring"},
        "tags": ["onboarding", "welcome"],
        "metadata": {"tenant_id": "t1"},
        "idempotency_key": "key-1",
    }
    fields.update(overrides)
    return OutgoingEmail(**fields)


# --------------------------------------------------------------------------- templates


def test_every_builtin_template_has_a_sample() -> None:
    assert set(SAMPLES) == set(BUILTIN_TEMPLATES)


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_builtin_template_renders_html_and_text_with_escaping(name: str) -> None:
    rendered = render(name, SAMPLES[name])
    assert rendered.subject and "\n" not in rendered.subject
    # The shared layout, inline-styled.
    assert rendered.html.startswith("<!DOCTYPE html>")
    assert 'style="' in rendered.html and "<style" not in rendered.html
    assert "You received this email because" in rendered.html
    assert "You received this email because" in rendered.text
    # Context is escaped in HTML, verbatim in text.
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &#34;co&#34;" in rendered.html
    assert EVIL in rendered.text
    assert "<" not in rendered.text.replace(EVIL, "")


def test_subject_from_payload_wins_over_the_template() -> None:
    assert render("welcome", {"first_name": "Ann"}).subject == "Welcome to CRM, Ann!"
    assert render("welcome", {"first_name": "Ann"}, "Hi there").subject == "Hi there"


def test_missing_variable_is_a_permanent_error_naming_it() -> None:
    with pytest.raises(PermanentError, match="needs 'reset_url'"):
        render("password-reset", {"first_name": "Ann"})


def test_unknown_template_is_permanent() -> None:
    with pytest.raises(PermanentError, match="unknown email template 'nope'"):
        render("nope", {})


def _tenant_dir(tmp_path: Path, html: str, text: str, name: str = "promo") -> Path:
    directory = tmp_path / "files" / "templates" / "t1"
    directory.mkdir(parents=True)
    (directory / f"{name}.html.j2").write_text(html)
    (directory / f"{name}.txt.j2").write_text(text)
    return directory


def test_tenant_template_renders_in_the_sandbox_with_the_layout(tmp_path: Path) -> None:
    directory = _tenant_dir(
        tmp_path,
        '{% extends "_layout.html.j2" %}{% block content %}<b>Sale {{ name }}</b>{% endblock %}',
        '{% extends "_layout.txt.j2" %}{% block subject %}Sale for {{ name }}{% endblock %}'
        "{% block content %}Sale {{ name }}{% endblock %}",
    )
    rendered = render("promo", {"name": "<Ann>"}, tenant_dir=directory)
    assert rendered.subject == "Sale for <Ann>"
    assert "<b>Sale &lt;Ann&gt;</b>" in rendered.html and "<!DOCTYPE html>" in rendered.html
    assert "\nSale <Ann>\n" in rendered.text and "Sale for" not in rendered.text


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ name.__class__.__base__ }}",
    ],
)
def test_sandboxed_tenant_template_cannot_reach_python_internals(
    tmp_path: Path, expression: str
) -> None:
    directory = _tenant_dir(tmp_path, expression, "{% block subject %}x{% endblock %}x")
    with pytest.raises(PermanentError, match="is unsafe"):
        render("promo", {"name": "Ann"}, tenant_dir=directory)


# --------------------------------------------------------------------------- MIME


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def test_mime_is_multipart_alternative_with_utf8_headers() -> None:
    email = sample_email()
    raw = email.as_bytes()
    assert raw.isascii()  # headers RFC 2047-encoded, bodies quoted-printable
    assert b"=?utf-8?" in raw
    message = parse(raw)
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content().strip() == "Hallo Zoë, 10 €"
    assert parts[1].get_content().strip() == "<p>Hallo Zoë, 10 &euro;</p>"
    assert str(message["Subject"]) == "Grüße aus Köln – über 10 €"
    assert message["From"].addresses[0].display_name == "Jürgen Müller"
    assert message["To"].addresses[0].display_name == "Zoë Ångström"
    assert str(message["Cc"]) == "cc@example.com"
    assert str(message["Reply-To"]) == "replies@example.com"
    assert message["Bcc"] is None and b"hidden@example.com" not in raw
    assert message["X-Campaign"] == "spring"
    assert message["X-Crmqueue-Tags"] == "onboarding, welcome"
    assert message["Date"].datetime is not None
    assert message["Message-ID"] == email.message_id
    assert email.message_id.endswith("@example.com>")
    assert email.recipients == ["zoe@example.com", "cc@example.com", "hidden@example.com"]


def test_message_id_is_stable_for_an_idempotency_key() -> None:
    assert sample_email().message_id == sample_email().message_id
    assert sample_email().message_id != sample_email(idempotency_key="key-2").message_id


def test_custom_headers_cannot_override_built_ones() -> None:
    with pytest.raises(PermanentError, match="Bcc"):
        sample_email(headers={"Bcc": "sneaky@example.com"})


# --------------------------------------------------------------------------- outbox


def test_outbox_writes_an_eml_file_and_remembers_the_message(tmp_path: Path) -> None:
    outbox.clear()
    provider = get_provider(email_settings(tmp_path).email)
    result = provider.send(sample_email())
    assert result.provider == "outbox"
    # no temporary file left behind (.sent holds the idempotency keys' markers)
    files = [path for path in (tmp_path / "outbox").iterdir() if path.name != ".sent"]
    assert len(files) == 1 and files[0].suffix == ".eml"
    message = parse(files[0].read_bytes())
    assert message["Message-ID"] == result.message_id
    assert [entry.path for entry in outbox.outbox] == files
    assert outbox.outbox[0].email.bcc == ["hidden@example.com"]


def test_build_email_from_a_payload(tmp_path: Path) -> None:
    payload = validate_payload(
        EmailPayload,
        {"tenantId": "t1", "to": "ann@example.com", "template": "welcome",
         "context": {"first_name": "Ann"}, "tags": ["x"]},
    )  # fmt: skip
    email = crmqueue.workers.email.build_email(payload, email_settings(tmp_path), "k", "job1")
    assert email.from_ == "CRM <noreply@localhost>"
    assert email.subject == "Welcome to CRM, Ann!"
    assert email.metadata == {"tenant_id": "t1", "job_id": "job1"}


# --------------------------------------------------------------------------- end to end


def test_consumer_sends_a_welcome_email_through_the_outbox(
    broker: Any, start_consumer: Any, tmp_path: Path
) -> None:
    start_consumer(broker, ["email"])
    job = tasks.send_email(
        tenant_id="t1",
        to="ann@example.com",
        template="welcome",
        context={"first_name": "Ann"},
        bcc=["audit@example.com"],
    )
    info = job.wait(timeout=20)
    assert info.state == "completed", info.errors
    assert info.result["provider"] == "outbox"
    files = list((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 1
    message = parse(files[0].read_bytes())
    assert message["Message-ID"] == info.result["message_id"]
    assert str(message["Subject"]) == "Welcome to CRM, Ann!"
    stored = broker.queue("email").store.peek_data(f"email-sent:{job.id}")
    assert json.loads(stored) == info.result


def test_a_job_that_already_sent_does_not_send_again(
    broker: Any, start_consumer: Any, tmp_path: Path
) -> None:
    from conftest import wait_until

    queue = broker.queue("email")
    payload = {"tenant_id": "t1", "to": ["ann@example.com"], "template": "welcome",
               "context": {"first_name": "Ann"}}  # fmt: skip
    job_id = queue.enqueue("crmqueue.workers.email.send_email", payload, job_id="job-sent-before")
    # A consumer claimed it, the vendor accepted, the "sent" record was written, and the
    # consumer died before the job was recorded complete: the reaper puts it back.
    (crashed,) = queue.store.claim("crashed-consumer", 0.1, 1).jobs
    assert crashed.id == job_id and crashed.first_run
    before = {"provider": "resend", "message_id": "already-sent"}
    queue.store.put_data("email-sent:job-sent-before", json.dumps(before).encode())
    assert wait_until(lambda: queue.store.reap(3)) == [job_id]
    start_consumer(broker, ["email"])
    done = Job(job_id, "email").wait(timeout=20)
    assert done.state == "completed"
    assert done.result == before
    assert not (tmp_path / "outbox").exists() or not list((tmp_path / "outbox").iterdir())


def test_missing_variable_is_refused_at_enqueue_and_kills_a_raw_job_at_once(
    broker: Any, start_consumer: Any
) -> None:
    with pytest.raises(PayloadError, match=r"context: template 'password-reset' needs 'reset_url'"):
        tasks.send_email(tenant_id="t1", to="ann@example.com", template="password-reset",
                         context={"first_name": "Ann"})  # fmt: skip
    # A job stored without the check (another producer, an older version) dies on its
    # first attempt with the variable's name (the worker validates the payload again):
    # a retry could not help.
    start_consumer(broker, ["email"])
    payload = {"tenant_id": "t1", "to": ["ann@example.com"], "template": "password-reset",
               "context": {"first_name": "Ann"}}  # fmt: skip
    job_id = broker.queue("email").enqueue("crmqueue.workers.email.send_email", payload)
    info = Job(job_id, "email").wait(timeout=20)
    assert info.state == "dead"
    assert info.attempts == 1
    assert [e["type"] for e in info.errors] == ["PermanentError"]
    assert "needs 'reset_url'" in info.errors[0]["message"]


# --------------------------------------------------------------------------- CLI


def test_cli_email_preview_prints_and_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(
        main, ["email", "preview", "welcome", "--context", '{"first_name": "A&B"}']
    )
    assert result.exit_code == 0, result.output
    assert "Subject: Welcome to CRM, A&B!" in result.output
    assert "Welcome, A&amp;B!" in result.output
    out = tmp_path / "preview"
    result = runner.invoke(
        main, ["email", "preview", "welcome", "--context", '{"first_name": "A"}', "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "welcome.html").read_text().startswith("<!DOCTYPE html>")
    assert "Welcome, A!" in (out / "welcome.txt").read_text()
    result = runner.invoke(main, ["email", "preview", "password-reset"])
    assert result.exit_code == 1
    assert "needs 'reset_url'" in result.output


def test_cli_email_test_sends_through_the_configured_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRMQUEUE_EMAIL__OUTBOX_DIR", str(tmp_path / "box"))
    result = CliRunner().invoke(main, ["email", "test", "--to", "ann@example.com"])
    assert result.exit_code == 0, result.output
    assert "sent through outbox: message id <" in result.output
    assert len(list((tmp_path / "box").glob("*.eml"))) == 1


# --------------------------------------------------------------------------- rate limit


def test_send_rate_is_shared_through_the_storage(tmp_path: Path) -> None:
    import time

    from crmqueue.engine.storage import open_store
    from crmqueue.workers.email import acquire_send_slot

    url = f"sqlite:///{tmp_path}/queues.db"
    one, two = open_store(url, "email", 2.0), open_store(url, "email", 2.0)
    started = time.monotonic()
    for store in (one, two, one, two, one):  # two "processes" taking turns
        acquire_send_slot(store, "resend", rate=20.0)
    # Five sends at 20/s need at least four slot boundaries: >= 0.15 s even if the first
    # send came at the very end of a slot.
    assert time.monotonic() - started >= 0.15
    # A limit that cannot be met in time is a retry later, not a blocked worker.
    acquire_send_slot(one, "slow", rate=0.01)
    with pytest.raises(RetryableError, match="rate limit") as caught:
        acquire_send_slot(two, "slow", rate=0.01, max_wait=0.05)
    assert caught.value.delay is not None and caught.value.delay >= 1.0


def test_registered_tenant_template_renders_in_the_sandbox(tmp_path: Path) -> None:
    from crmqueue.errors import CrmQueueError
    from crmqueue.providers.email.render import register_tenant_template, render

    directory = register_tenant_template(
        tmp_path, "t1", "promo", "<p>Hi {{ name }}</p>",
        "{% block subject %}Offer for {{ name }}{% endblock %}Hi {{ name }}",
    )  # fmt: skip
    rendered = render("promo", {"name": "<Ann>"}, tenant_dir=directory)
    assert rendered.subject == "Offer for <Ann>"
    assert rendered.html == "<p>Hi &lt;Ann&gt;</p>"
    with pytest.raises(CrmQueueError, match=r"html template 'promo', line 1"):
        register_tenant_template(tmp_path, "t1", "promo", "{% if %}", "x")
    with pytest.raises(CrmQueueError, match="template name"):
        register_tenant_template(tmp_path, "t1", "../evil", "x", "x")
    with pytest.raises(CrmQueueError, match=r"access to '__mro__' is not allowed"):
        register_tenant_template(tmp_path, "t1", "sneaky", "{{ ''.__class__.__mro__ }}", "x")
    assert not (directory / "sneaky.html.j2").exists()
    with pytest.raises(PermanentError, match="unknown email template 'promo'"):
        render("promo", {"name": "x"}, tenant_dir=tmp_path / "templates" / "t2")
