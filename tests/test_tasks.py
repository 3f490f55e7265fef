"""The client face: every typed task function, and what importing it loads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
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
        "tenantId": "t1", "userId": "u1", "fileUrl": "contacts.csv", "fileType": "csv",
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

    typed = tasks.enqueue_many("email", [good, _set(good, "subject", "Hi 😀")])
    by_name = tasks.enqueue_many("email", [raw[0], {"tenant_id": "t2"}], kind="myjobs.ping")
    stored = [jobs.get(job.id) for job in typed + by_name]
    assert [info.payload.get("subject") for info in stored[:2]] == [None, "Hi 😀"]
    assert [(info.name, info.tenant) for info in stored[2:]] == [
        ("myjobs.ping", "t1"), ("myjobs.ping", "t2"),
    ]  # fmt: skip


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
    # Keys print as they are (a key's unprintable characters are shown escaped: see
    # test_keys_by_name_jobs_and_enqueue_many_name_the_path).
    key_text = st.text(st.characters(blacklist_categories=("C", "Z")), max_size=8)
    leaves = (
        st.none()
        | st.booleans()
        | st.integers()
        | clean_text
        | st.floats(allow_nan=False, allow_infinity=False)
    )
    tree = st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key_text, inner, max_size=4),
        max_leaves=20,
    )
    payload = data.draw(st.dictionaries(key_text, tree, max_size=5))
    payload["tenant_id"] = "t1"
    decoded = json.loads(encode_message("id", "m.f", payload))["payload"]
    assert decoded == json.loads(json.dumps(payload))

    # Plant a bad text at a random place: a new key, a value in a dict, or a list item.
    bad = data.draw(st.sampled_from([LONE, "\udc00", NUL]))
    prefix, suffix = data.draw(key_text), data.draw(key_text)
    bad_text = prefix + bad + suffix
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
        escaped = prefix + {LONE: "\\ud83d", "\udc00": "\\udc00", NUL: "\\x00"}[bad] + suffix
        where = f"{path}.{escaped}" if path else escaped
    else:
        node["planted"] = bad_text
        where = f"{path}.planted" if path else "planted"
    with pytest.raises(PayloadError) as info:
        encode_message("id", "m.f", payload)
    assert info.value.errors == [(where, info.value.errors[0][1])]
    reason = info.value.errors[0][1]
    assert ("NUL" in reason) == (bad == NUL) and ("the key itself" in reason) == as_key


# --------------------------------------------------------------------------- bodies by name

PRODUCER = """
import json, sys
from crmqueue import tasks
jobs = [tasks.enqueue("email", payload, kind=kind).id for payload, kind in json.loads(sys.argv[1])]
leaked = sorted(m for m in sys.modules if m.split(".")[0] == "tests" or "workers" in m)
print(json.dumps({"ids": jobs, "leaked": leaked}))
"""


@pytest.mark.parametrize("storage_url", ["sqlite", "redis"], indirect=True)
def test_a_producer_enqueues_a_body_it_never_imported_and_the_worker_validates(
    broker: Broker, start_consumer: Any, storage_url: str, tmp_path: Path
) -> None:
    """Like Celery's send_task: the producer (another process, which imports neither the
    bodies nor their payload models) names the body; the worker that has it validates the
    payload, and one without it marks the job dead, naming it, instead of retrying."""
    calls = [
        ({"tenant_id": "t1", "name": "Ann"}, "tests.fixture_jobs.typed"),
        ({"tenant_id": "t1", "nme": "Ann"}, "tests.fixture_jobs.typed"),
        ({"tenant_id": "t1", "n": 1}, "myjobs.ping"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMQUEUE_", "REDIS_"))}
    env["CRMQUEUE_STORAGE__URL"] = storage_url
    (tmp_path / "producer").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", PRODUCER, json.dumps(calls)],
        cwd=tmp_path / "producer", env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    produced = json.loads(result.stdout)
    assert produced["leaked"] == []
    ok, invalid, unknown = (tasks.Job(job_id, "email") for job_id in produced["ids"])
    assert jobs.get(unknown.id).state == "waiting"
    assert jobs.get(unknown.id).name == "myjobs.ping"

    start_consumer(broker, ["email"])
    done = ok.wait(20)
    assert (done.state, done.result) == ("completed", "hello Ann")
    failed = invalid.wait(20)
    assert (failed.state, failed.attempts) == ("dead", 1)
    assert failed.errors[-1]["type"] == "PermanentError"
    assert "validation in the worker" in failed.errors[-1]["message"]
    assert "name" in failed.errors[-1]["message"]
    lost = unknown.wait(20)
    assert (lost.state, lost.attempts) == ("dead", 1)
    assert lost.errors[-1]["type"] == "PoisonMessage"
    assert "job body 'myjobs.ping' not found on queue 'email'" in lost.errors[-1]["message"]


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_kind_resolution_by_name(broker: Broker) -> None:
    job = tasks.enqueue("webhook", {"tenant_id": "t1", "x": [1]}, kind="billing.jobs.sync")
    info = jobs.get(job.id)
    assert (info.queue, info.name, info.state, info.payload) == (
        "webhook", "billing.jobs.sync", "waiting", {"tenant_id": "t1", "x": [1]},
    )  # fmt: skip
    assert "kind" in _refused(tasks.enqueue, "import-export", {"tenantId": "t1"}, kind="imprt")
    assert "kind" in _refused(tasks.enqueue, "email", {"tenant_id": "t1"}, kind="my jobs.x")
    # A built-in body named by its task name gets its payload model, on its queue only.
    errors = _refused(tasks.enqueue, "import-export", {"tenantId": "t1"},
                      kind="crmqueue.workers.import_export.import_records")  # fmt: skip
    assert {"user_id", "file_url"} <= set(errors)
    errors = _refused(tasks.enqueue, "webhook", {"tenant_id": "t1"},
                      kind="crmqueue.workers.email.send_email")  # fmt: skip
    assert errors == {"kind": "'crmqueue.workers.email.send_email' runs on queue 'email', not"
                              " 'webhook'"}  # fmt: skip
    # A custom body this process registered: its model, on its queue only, and the text
    # checks every payload gets.
    errors = _refused(tasks.enqueue, "email", {"tenant_id": "t1"}, kind="tests.fixture_jobs.typed")
    assert "name" in errors
    bad = {"tenant_id": "t1", "name": f"A{NUL}"}
    assert "name" in _refused(tasks.enqueue, "email", bad, kind="tests.fixture_jobs.typed")
    assert "kind" in _refused(tasks.enqueue, "report", {"tenant_id": "t1"},
                              kind="tests.fixture_jobs.noop")  # fmt: skip
    # What every job needs still holds by name.
    assert "tenant_id" in _refused(tasks.enqueue, "email", {"tenantId": "t1"}, kind="a.b")
    assert "payload" in _refused(tasks.enqueue, "email", ["tenant_id"], kind="a.b")  # type: ignore[arg-type]
    assert _stored(broker) == 1


def test_cli_enqueue_refuses_unusable_text_from_json_and_files(
    tmp_path: Path, storage_url: str
) -> None:
    from tests.test_cli import _make_cli

    cli = _make_cli(tmp_path, storage_url)
    email = (
        '{"tenantId": "t1", "to": "a@example.com", "template": "welcome", "subject": "Hi \\ud83d"}'
    )
    result = cli("enqueue", "email", "--json", email)
    assert result.returncode != 0 and result.stdout == ""
    assert "subject: lone surrogate U+D83D" in result.stderr
    (tmp_path / "job.json").write_text('{"tenant_id": "t1", "note": {"k\\u0000": [1, "\\udc00"]}}')
    result = cli("enqueue", "webhook", "--file", "job.json", "--kind", "myjobs.ping")
    assert result.returncode != 0
    assert "note.k\\x00: the key itself: NUL" in result.stderr
    assert "note.k\\x00.1: lone surrogate U+DC00" in result.stderr
    # Bytes that are not UTF-8: in a file, and in an argument (Python keeps them as lone
    # surrogates U+DC80-U+DCFF).
    (tmp_path / "latin1.json").write_bytes('{"tenant_id": "t1", "x": "café"}'.encode("latin-1"))
    result = cli("enqueue", "webhook", "--file", "latin1.json", "--kind", "myjobs.ping")
    assert result.returncode != 0
    assert "latin1.json: not UTF-8 at byte 29" in result.stderr and "Traceback" not in result.stderr
    argument = '{"tenant_id": "t1", "x": "café"}'.encode("latin-1")
    result = cli("enqueue", "webhook", "--json", argument, "--kind", "myjobs.ping")  # type: ignore[arg-type]
    assert result.returncode != 0
    assert "x: byte 0xE9 at character 3 is not UTF-8" in result.stderr
    result = cli("enqueue", "webhook", "--json", '{"tenant_id": "t1"}', "--kind", "myjobs.ping")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"[0-9a-f]{32}\n", result.stdout)


@pytest.mark.parametrize("storage_url", ["sqlite", "redis"], indirect=True)
def test_priority_and_delay_that_no_store_can_keep_are_refused(broker: Broker) -> None:
    email = {"tenant_id": "t1", "to": "a@example.com", "template": "welcome"}
    for priority in ("high", 10.5, True, 1001, -1001):
        errors = _refused(tasks.send_email, **email, priority=priority)
        assert list(errors) == ["priority"], priority
    for delay in (float("nan"), float("inf"), -1.0, 1e12):
        errors = _refused(tasks.enqueue, "email", email, delay=delay)
        assert list(errors) == ["delay"], delay
    assert _stored(broker) == 0
    job = tasks.send_email(**email, priority=-1000, delay=3600)
    assert jobs.get(job.id).state == "scheduled"


@pytest.mark.parametrize("storage_url", ["redis"], indirect=True)
def test_enqueue_after_fork_uses_the_childs_own_connection(
    broker: Broker, storage_url: str
) -> None:
    """An app that builds its broker and then forks workers (gunicorn --preload): each
    process enqueues over a connection of its own, never over the parent's socket."""
    import multiprocessing

    import redis

    email = {"tenant_id": "t1", "to": "a@example.com", "template": "welcome"}
    tasks.send_email(**email)  # the parent now keeps a connection
    server = redis.Redis.from_url(storage_url)
    before = server.info("clients")["connected_clients"]

    def child(report: Any, go: Any) -> None:
        report.send([tasks.send_email(**email, subject=f"child {n}").id for n in range(20)])
        go.recv()  # keep this process (and its connection) until the parent has counted

    context = multiprocessing.get_context("fork")
    reports, gos, processes = [], [], []
    for _ in range(3):
        report_in, report_out = context.Pipe(duplex=False)
        go_in, go_out = context.Pipe(duplex=False)
        process = context.Process(target=child, args=(report_out, go_in))
        process.start()
        reports.append(report_in), gos.append(go_out), processes.append(process)
    parent_ids = [tasks.send_email(**email, subject=f"parent {n}").id for n in range(20)]
    assert all(report.poll(30) for report in reports), "a child never enqueued"
    child_ids = [job_id for report in reports for job_id in report.recv()]
    # Each child opened its own connection (a shared socket would add none).
    assert server.info("clients")["connected_clients"] >= before + 3
    for go in gos:
        go.send("done")
    for process in processes:
        process.join(30)
        if process.exitcode is None:
            process.kill()
        assert process.exitcode == 0
    assert {jobs.get(job_id).state for job_id in parent_ids + child_ids} == {"waiting"}
    assert _stored(broker) == 1 + 20 + 3 * 20
    server.close()
