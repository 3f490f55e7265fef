"""The client face: every typed task function, and what importing it loads."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmqueue import jobs, tasks
from crmqueue.engine.queues import Broker
from crmqueue.errors import PayloadError


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_each_typed_function_enqueues_on_its_queue(broker: Broker) -> None:
    calls: list[tuple[Any, dict[str, Any], str, str]] = [
        (tasks.send_email,
         {"tenant_id": "t1", "to": "a@example.com", "template": "welcome"},
         "email", "crmqueue.workers.email.send_email"),
        (tasks.import_records,
         {"tenant_id": "t1", "user_id": "u1", "file_url": "contacts.csv", "file_type": "csv",
          "entity_type": "contacts", "mapping_config": {"email": "E-mail"}},
         "import-export", "crmqueue.workers.import_export.import_records"),
        (tasks.export_records,
         {"tenant_id": "t1", "user_id": "u1", "entity_type": "leads", "format": "xlsx"},
         "import-export", "crmqueue.workers.import_export.export_records"),
        (tasks.generate_report,
         {"tenant_id": "t1", "user_id": "u1", "report_type": "pipeline", "format": "pdf",
          "date_range": {"startDate": "2026-01-01", "endDate": "2026-03-31"}},
         "report", "crmqueue.workers.report.generate_report"),
        (tasks.deliver_webhook,
         {"tenant_id": "t1", "webhook_id": "wh1", "event_type": "lead.won", "payload": {"id": 3}},
         "webhook", "crmqueue.workers.webhook.deliver_webhook"),
        (tasks.publish_event,
         {"tenant_id": "t1", "event_type": "contact.created", "payload": {"id": 1}},
         "webhook", "crmqueue.workers.webhook.publish_event"),
        (tasks.send_notification,
         {"tenant_id": "t1", "user_id": "u1", "type": "in-app", "title": "Hi",
          "message": "Your export is ready", "action_url": "/exports/1"},
         "notification", "crmqueue.workers.notification.send_notification"),
    ]  # fmt: skip
    for function, kwargs, queue, name in calls:
        job = function(**kwargs)
        info = jobs.get(job.id)
        assert (job.queue, info.queue, info.name, info.state, info.tenant) == (
            queue, queue, name, "waiting", "t1",
        )  # fmt: skip
        assert info.max_attempts == broker.queue(queue).spec.attempts
    (report,) = jobs.list_jobs("report", "waiting")
    assert report.payload["date_range"] == {"start_date": "2026-01-01", "end_date": "2026-03-31"}


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_generic_enqueue_accepts_the_original_camel_case_json(broker: Broker) -> None:
    original = {
        "tenantId": "t1", "userId": "u1", "fileUrl": "file:///x.csv", "fileType": "csv",
        "entityType": "contacts", "mappingConfig": {"email": "E-mail"}, "dryRun": True,
    }  # fmt: skip
    job = tasks.enqueue("import-export", original, kind="import")
    payload = jobs.get(job.id).payload
    assert payload["tenant_id"] == "t1" and payload["dry_run"] is True
    assert payload["mapping_config"] == {"email": "E-mail"}
    assert "tenantId" not in json.dumps(payload)


def test_importing_the_client_face_loads_no_worker_side_library() -> None:
    probe = (
        "import sys, crmqueue.tasks, crmqueue.jobs;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('openpyxl', 'xhtml2pdf', 'urllib3', 'jinja2', 'sqlalchemy', 'reportlab')"
        " or m.startswith('crmqueue.workers.') or m.startswith('crmqueue.providers')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- unusable text

LONE = "\ud83d"  # the first half of 😀 (U+1F600): a truncated emoji
NUL = "\x00"


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `data` with `value` at the dotted `path` (list items by index)."""
    data = json.loads(json.dumps(data))
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


# (function, valid keyword arguments, field paths holding text) for every typed function.
TYPED: list[tuple[Any, dict[str, Any], list[str]]] = [
    (tasks.send_email,
     {"tenant_id": "t1", "to": ["a@example.com"], "template": "welcome", "subject": "Hi",
      "context": {"first_name": "Jo", "login_url": "https://app.example.com/login",
                  "user": {"name": "Jo"}, "items": ["a", "b"]},
      "idempotency_key": "k1", "cc": ["c@example.com"]},
     ["subject", "to.0", "cc.0", "context.first_name", "context.user.name", "context.items.1",
      "idempotency_key"]),
    (tasks.import_records,
     {"tenant_id": "t1", "user_id": "u1", "file_url": "in.csv", "file_type": "csv",
      "entity_type": "contacts", "mapping_config": {"email": "E-mail"}},
     ["user_id", "file_url", "mapping_config.email"]),
    (tasks.export_records,
     {"tenant_id": "t1", "user_id": "u1", "entity_type": "contacts", "format": "csv",
      "filters": {"city": "Lyon"}},
     ["user_id", "filters.city"]),
    (tasks.generate_report,
     {"tenant_id": "t1", "user_id": "u1", "report_type": "sales", "format": "pdf",
      "date_range": {"start_date": "2026-01-01", "end_date": "2026-01-31"},
      "filters": {"owner": "Ann"}, "dimensions": ["owner"]},
     ["user_id", "filters.owner", "dimensions.0"]),
    (tasks.deliver_webhook,
     {"tenant_id": "t1", "webhook_id": "wh1", "event_type": "contact.created",
      "payload": {"items": [{"title": "a"}, {"title": "b"}, {"title": "c"}, {"title": "d"}]}},
     ["webhook_id", "payload.items.3.title"]),
    (tasks.publish_event,
     {"tenant_id": "t1", "event_type": "contact.created", "payload": {"name": "Ann"}},
     ["payload.name"]),
    (tasks.send_notification,
     {"tenant_id": "t1", "user_id": "u1", "type": "in-app", "title": "Hi", "message": "Hello",
      "action_url": "/leads/1"},
     ["user_id", "title", "message", "action_url"]),
]  # fmt: skip
TYPED_CASES = [
    pytest.param(function, kwargs, path, id=f"{function.__name__}:{path}")
    for function, kwargs, paths in TYPED
    for path in paths
]


def _stored(broker: Broker) -> int:
    return sum(q.store.counts()["waiting"] for q in broker.queues.values())


def _refused(call: Any, *args: Any, **kwargs: Any) -> dict[str, str]:
    with pytest.raises(PayloadError) as info:
        call(*args, **kwargs)
    str(info.value).encode("utf-8")  # the message itself prints anywhere
    paths = [path for path, _ in info.value.errors]
    assert len(paths) == len(set(paths)), info.value.errors  # each field told once
    return dict(info.value.errors)


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("function", "kwargs", "path"), TYPED_CASES)
@pytest.mark.parametrize("bad", [f"Jo {LONE}", f"Jo{NUL}e"], ids=["lone-surrogate", "nul"])
def test_every_typed_function_refuses_unusable_text_naming_the_field(
    broker: Broker, function: Any, kwargs: dict[str, Any], path: str, bad: str
) -> None:
    function(**kwargs)  # valid as given
    errors = _refused(function, **_set(kwargs, path, bad))
    # The field's path, or its parent's with the rest named in the reason (a check of a
    # whole mapping, e.g. export filters, reports "filters: city: ...").
    assert path in errors or any(
        path.startswith(f"{field}.") and path[len(field) + 1 :] in reason
        for field, reason in errors.items()
    ), errors
    assert _stored(broker) == 1


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_refusal_stores_nothing_and_valid_astral_text_round_trips(broker: Broker) -> None:
    context = {"first_name": "Zoë 😀", "login_url": "https://x.example/login", "k😀": "v"}
    with pytest.raises(PayloadError):
        tasks.send_email(tenant_id="t1", to="a@example.com", template="welcome",
                         context={**context, "note": f"cut {LONE}"})  # fmt: skip
    assert _stored(broker) == 0
    # A high-low pair given as two code points is one astral character once it is JSON.
    job = tasks.send_email(tenant_id="t1", to="a@example.com", template="welcome",
                           context={**context, "pair": "\ud83d\ude00"})  # fmt: skip
    payload = jobs.get(job.id).payload
    assert payload["context"]["first_name"] == "Zoë 😀"
    assert payload["context"]["k😀"] == "v" and payload["context"]["pair"] == "😀"


@pytest.mark.parametrize("storage_url", ["sqlite", "redis"], indirect=True)
def test_keys_by_name_jobs_and_enqueue_many_name_the_path(broker: Broker) -> None:
    bad_key = {"first_name": "Jo", "login_url": "https://x.example/l", f"nick{LONE}": "x"}
    errors = _refused(tasks.send_email, tenant_id="t1", to="a@example.com",
                      template="welcome", context=bad_key)  # fmt: skip
    assert list(errors) == ["context.nick\\ud83d"]
    assert errors["context.nick\\ud83d"].startswith("the key itself: lone surrogate U+D83D")

    # A body this process never imported, by name: the same checks.
    by_name = {"tenant_id": "t1", "deep": {"list": [1, {"k": f"{NUL}"}], f"{LONE}": 1}}
    errors = _refused(tasks.enqueue, "email", by_name, kind="myjobs.ping")
    assert set(errors) == {"deep.list.1.k", "deep.\\ud83d"}
    assert errors["deep.list.1.k"].startswith("NUL (U+0000) at character 0")

    good = {"tenant_id": "t1", "to": "a@example.com", "template": "welcome",
            "context": {"first_name": "A", "login_url": "https://x.example/l"}}  # fmt: skip
    payloads = [good, _set(good, "subject", f"x{LONE}"), good, _set(good, "to", "nope"),
                _set(good, "context.first_name", f"B{NUL}")]  # fmt: skip
    errors = _refused(tasks.enqueue_many, "email", payloads)
    assert list(errors) == ["1.subject", "3.to", "4.context.first_name"]
    raw = [{"tenant_id": "t1", "n": 1}, {"tenant_id": "t1", "n": float("nan"), "s": {1}}]
    errors = _refused(tasks.enqueue_many, "email", raw, kind="myjobs.ping")
    assert set(errors) == {"1.n", "1.s"}
    assert _stored(broker) == 0


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_unusable_text_anywhere_is_named_and_nothing_else(data: st.DataObject) -> None:
    """Property: in any JSON-like payload, a string or key holding a lone surrogate or a NUL
    is refused with exactly its path, and a payload without one encodes to JSON that reads
    back equal."""
    from crmqueue.engine.queues import encode_message

    clean_text = st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8
    )
    leaves = (
        st.none()
        | st.booleans()
        | st.integers()
        | clean_text
        | st.floats(allow_nan=False, allow_infinity=False)
    )
    tree = st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(clean_text, inner, max_size=4),
        max_leaves=20,
    )
    payload = data.draw(st.dictionaries(clean_text, tree, max_size=5))
    payload["tenant_id"] = "t1"
    decoded = json.loads(encode_message("id", "m.f", payload))["payload"]
    assert decoded == json.loads(json.dumps(payload))

    # Plant a bad text at a random place: a new key, a value in a dict, or a list item.
    bad = data.draw(st.sampled_from([LONE, "\udc00", NUL]))
    bad_text = data.draw(clean_text) + bad + data.draw(clean_text)
    containers: list[tuple[str, Any]] = []

    def collect(node: Any, path: str) -> None:
        if isinstance(node, dict):
            containers.append((path, node))
            for key, value in node.items():
                collect(value, f"{path}.{key}" if path else key)
        elif isinstance(node, list):
            containers.append((path, node))
            for index, value in enumerate(node):
                collect(value, f"{path}.{index}" if path else str(index))

    collect(payload, "")
    path, node = data.draw(st.sampled_from(containers))
    as_key = isinstance(node, dict) and data.draw(st.booleans())
    if isinstance(node, list):
        node.append(bad_text)
        where = f"{path}.{len(node) - 1}" if path else str(len(node) - 1)
    elif as_key:
        node[bad_text] = 1
        escaped = bad_text.encode("utf-8", "backslashreplace").decode()
        where = f"{path}.{escaped}" if path else escaped
    else:
        node["planted"] = bad_text
        where = f"{path}.planted" if path else "planted"
    with pytest.raises(PayloadError) as info:
        encode_message("id", "m.f", payload)
    assert info.value.errors == [(where, info.value.errors[0][1])]
    reason = info.value.errors[0][1]
    assert ("NUL" in reason) == (bad == NUL) and ("the key itself" in reason) == as_key
