"""What every entry point refuses at enqueue, the same way for every kind: payloads nested
too deeply, schedules and priorities out of range or of the wrong type, a tenant id of
the wrong type; and the typed functions take every field of their payload models."""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmqueue import jobs, tasks
from crmqueue.engine.queues import MAX_DELAY, Broker
from crmqueue.errors import PayloadError
from crmqueue.json_text import MAX_DEPTH
from crmqueue.payloads import EmailPayload, ReportPayload, validate_payload
from crmqueue.tenancy import TENANT_ID_RULE
from tests.test_cli import _make_cli

SQLITE = pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)

# One valid call per typed function; the name of a field that takes any JSON, if any.
TYPED: list[tuple[Callable[..., Any], dict[str, Any], str | None]] = [
    (tasks.send_email,
     {"tenant_id": "t1", "to": "a@example.com", "template": "welcome",
      "context": {"first_name": "Ann"}}, "context"),
    (tasks.import_records,
     {"tenant_id": "t1", "user_id": "u1", "file_url": "contacts.csv", "file_type": "csv",
      "entity_type": "contacts"}, None),
    (tasks.export_records,
     {"tenant_id": "t1", "user_id": "u1", "entity_type": "leads", "format": "xlsx"}, None),
    (tasks.generate_report,
     {"tenant_id": "t1", "user_id": "u1", "report_type": "pipeline", "format": "pdf",
      "date_range": {"start_date": "2026-01-01", "end_date": "2026-03-31"}}, None),
    (tasks.deliver_webhook,
     {"tenant_id": "t1", "webhook_id": "wh1", "event_type": "lead.won", "payload": {}},
     "payload"),
    (tasks.publish_event,
     {"tenant_id": "t1", "event_type": "contact.created", "payload": {}}, "payload"),
    (tasks.send_notification,
     {"tenant_id": "t1", "user_id": "u1", "type": "in-app", "title": "Hi", "message": "M"},
     None),
]  # fmt: skip
ANY_JSON = [(f, kwargs, field) for f, kwargs, field in TYPED if field]


def nested(levels: int, *, in_list: bool = False) -> Any:
    """A value `levels` containers deep (objects, or objects and lists alternating)."""
    value: Any = "leaf"
    for level in range(levels):
        value = [value] if in_list and level % 2 else {"a": value}
    return value


def waiting_jobs() -> int:
    return sum(
        len(jobs.list_jobs(queue, state))
        for queue in tasks.KINDS
        for state in ("waiting", "scheduled")
    )


# --------------------------------------------------------------------------- depth


@SQLITE
@pytest.mark.parametrize(("function", "kwargs", "field"), ANY_JSON)
@pytest.mark.parametrize("levels", [MAX_DEPTH, 255, 900, 1100, 1200, 5000])
@pytest.mark.parametrize("in_list", [False, True])
def test_typed_functions_refuse_over_deep_json_naming_the_field(
    broker: Broker,
    function: Callable[..., Any],
    kwargs: dict[str, Any],
    field: str,
    levels: int,
    in_list: bool,
) -> None:
    # The payload object is level 1 and the field's own object level 2: MAX_DEPTH - 1
    # levels inside the field is the deepest allowed.
    value = {"x": nested(levels, in_list=in_list)}
    with pytest.raises(PayloadError) as caught:
        function(**{**kwargs, field: value})
    assert caught.value.errors == [
        (field, f"nested more than {MAX_DEPTH} levels deep (objects and lists inside each"
                f" other; a job payload allows {MAX_DEPTH})")
    ]  # fmt: skip
    assert waiting_jobs() == 0


@SQLITE
@pytest.mark.parametrize(("function", "kwargs", "field"), ANY_JSON)
def test_the_deepest_allowed_payload_is_enqueued_and_one_more_level_refused(
    broker: Broker, function: Callable[..., Any], kwargs: dict[str, Any], field: str
) -> None:
    deepest = nested(MAX_DEPTH - 2)  # inside the payload (1) and the field's object (2)
    job = function(**{**kwargs, field: {"x": deepest}})
    assert jobs.get(job.id).payload[field]["x"] == deepest
    with pytest.raises(PayloadError, match=f"{field}: nested more than {MAX_DEPTH}"):
        function(**{**kwargs, field: {"x": [deepest]}})


@SQLITE
@pytest.mark.parametrize("levels", [MAX_DEPTH, 300, 900, 5000])
def test_by_name_and_batches_refuse_over_deep_json(broker: Broker, levels: int) -> None:
    deep = nested(levels)
    with pytest.raises(PayloadError) as caught:  # a body this producer never imported
        tasks.enqueue("webhook", {"tenant_id": "t1", "blob": deep}, kind="myjobs.ping")
    assert [field for field, _ in caught.value.errors] == ["blob"]
    with pytest.raises(PayloadError) as caught:  # a built-in kind by name
        tasks.enqueue("webhook", {"tenant_id": "t1", "event_type": "a.b", "payload": deep},
                      kind="publish")  # fmt: skip
    assert [field for field, _ in caught.value.errors] == ["payload"]
    good = {"tenant_id": "t1", "event_type": "a.b", "payload": {}}
    for kind in ("publish", "myjobs.ping"):
        with pytest.raises(PayloadError) as caught:
            tasks.enqueue_many("webhook", [good, {**good, "payload": deep}], kind=kind)
        assert [field for field, _ in caught.value.errors] == ["1.payload"]
    assert waiting_jobs() == 0


@SQLITE
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.lists(st.sampled_from(["object", "list"]), min_size=1, max_size=MAX_DEPTH + 10))
def test_depth_is_refused_exactly_when_over_the_limit(broker: Broker, shape: list[str]) -> None:
    value: Any = 1
    for container in shape:
        value = [value] if container == "list" else {"k": value}
    # The payload object (1) and the event's payload object (2) hold `shape`.
    too_deep = 2 + len(shape) > MAX_DEPTH
    try:
        tasks.publish_event(tenant_id="t1", event_type="a.b", payload={"v": value})
    except PayloadError as exc:
        assert too_deep and [field for field, _ in exc.errors] == ["payload"]
    else:
        assert not too_deep


@SQLITE
@pytest.mark.parametrize("levels", [70, 900, 5000])
@pytest.mark.parametrize("how", ["--json", "--file"])
def test_cli_enqueue_refuses_over_deep_json_without_a_traceback(
    tmp_path: Path, storage_url: str, levels: int, how: str
) -> None:
    cli = _make_cli(tmp_path, storage_url)
    # Written out: Python's own json cannot write 5,000 levels either.
    deep = '{"a":[' * (levels // 2) + "1" + "]}" * (levels // 2)
    text = '{"tenant_id": "t1", "event_type": "a.b", "payload": ' + deep + "}"
    if how == "--file":
        (tmp_path / "deep.json").write_text(text)
        text = "deep.json"
    done = cli("enqueue", "webhook", "--kind", "publish", how, text)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    assert f"payload: nested more than {MAX_DEPTH} levels deep" in done.stderr


# --------------------------------------------------------------------------- schedule


BAD_SCHEDULES: list[tuple[dict[str, Any], str]] = [
    ({"eta": dt.datetime.max}, "eta"),
    ({"eta": dt.datetime.min}, "eta"),
    ({"eta": dt.datetime.max.replace(tzinfo=dt.UTC)}, "eta"),
    ({"eta": dt.datetime.min.replace(tzinfo=dt.UTC)}, "eta"),
    ({"eta": dt.datetime.now(dt.UTC) + dt.timedelta(days=11 * 366)}, "eta"),
    ({"eta": dt.date(2030, 1, 1)}, "eta"),
    ({"eta": "2030-01-01T00:00:00"}, "eta"),
    ({"eta": 1_900_000_000}, "eta"),
    ({"eta": dt.datetime.now(dt.UTC), "delay": 5}, "eta"),
    ({"delay": float("nan")}, "delay"),
    ({"delay": float("inf")}, "delay"),
    ({"delay": -1}, "delay"),
    ({"delay": MAX_DELAY}, "delay"),
    ({"delay": "5"}, "delay"),
    ({"delay": True}, "delay"),
    ({"delay": dt.timedelta(seconds=5)}, "delay"),
    ({"priority": 1001}, "priority"),
    ({"priority": -1001}, "priority"),
    ({"priority": 1.5}, "priority"),
    ({"priority": "5"}, "priority"),
    ({"priority": True}, "priority"),
]


@SQLITE
@pytest.mark.parametrize(("function", "kwargs", "field"), TYPED)
@pytest.mark.parametrize(("schedule", "option"), BAD_SCHEDULES)
def test_every_entry_point_refuses_a_bad_schedule_naming_the_option(
    broker: Broker,
    function: Callable[..., Any],
    kwargs: dict[str, Any],
    field: str | None,
    schedule: dict[str, Any],
    option: str,
) -> None:
    with pytest.raises(PayloadError) as caught:
        function(**kwargs, **schedule)
    assert [name for name, _ in caught.value.errors] == [option]
    queue = next(q for q, kinds in tasks.KINDS.items() for k in kinds.values()
                 if k.name.endswith(function.__name__))  # fmt: skip
    with pytest.raises(PayloadError) as caught:
        tasks.enqueue(queue, {"tenant_id": "t1"}, kind="myjobs.ping", **schedule)
    assert [name for name, _ in caught.value.errors] == [option]
    assert waiting_jobs() == 0


@SQLITE
def test_good_schedules_are_kept(broker: Broker) -> None:
    now = dt.datetime.now(dt.UTC)
    soon = tasks.enqueue("webhook", {"tenant_id": "t1"}, kind="myjobs.ping", delay=60)
    later = tasks.enqueue("webhook", {"tenant_id": "t1"}, kind="myjobs.ping",
                          eta=now + dt.timedelta(days=3650))  # fmt: skip
    naive = dt.datetime.now() + dt.timedelta(hours=1)  # local time
    local = tasks.enqueue("webhook", {"tenant_id": "t1"}, kind="myjobs.ping", eta=naive,
                          priority=-1000)  # fmt: skip
    past = tasks.enqueue("webhook", {"tenant_id": "t1"}, kind="myjobs.ping",
                         eta=now - dt.timedelta(days=1), priority=1000)  # fmt: skip
    assert {jobs.get(j.id).state for j in (soon, later, local)} == {"scheduled"}
    assert jobs.get(past.id).state in ("waiting", "scheduled")


@SQLITE
@pytest.mark.parametrize(
    ("args", "option"),
    [(["--delay", "nan"], "--delay"), (["--delay", "inf"], "--delay"),
     (["--delay", "-1"], "--delay"), (["--delay", str(MAX_DELAY)], "--delay"),
     (["--priority", "1001"], "--priority"), (["--priority", "x"], "--priority")],
)  # fmt: skip
def test_cli_enqueue_refuses_a_bad_delay_or_priority_naming_it(
    tmp_path: Path, storage_url: str, args: list[str], option: str
) -> None:
    cli = _make_cli(tmp_path, storage_url)
    done = cli("enqueue", "email", "--kind", "cli_jobs.hello", "--json", '{"tenant_id": "t"}',
               *args)  # fmt: skip
    assert done.returncode == 2
    assert option in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------- tenant


@SQLITE
@pytest.mark.parametrize(
    ("tenant", "reason"),
    [(5, "must be text (a tenant id), not int"), (None, "field required"),
     (["t1"], "must be text (a tenant id), not list"),
     *((bad, TENANT_ID_RULE) for bad in ("", "a b", "x" * 65, ".", "..", "../t1", "t1/x"))],
)  # fmt: skip
def test_by_name_a_wrong_tenant_id_is_named_for_what_it_is(
    broker: Broker, tenant: Any, reason: str
) -> None:
    payload = {} if tenant is None else {"tenant_id": tenant}
    with pytest.raises(PayloadError) as caught:
        tasks.enqueue("webhook", payload, kind="myjobs.ping")
    assert caught.value.errors == [("tenant_id", reason)]
    with pytest.raises(PayloadError) as caught:
        tasks.enqueue_many("webhook", [{"tenant_id": "t1"}, payload], kind="myjobs.ping")
    assert caught.value.errors == [("1.tenant_id", reason)]


@pytest.mark.parametrize("tenant", ["", "a b", "x" * 65, ".", "..", "../t1", "t1/x", "é"])
def test_a_typed_payload_refuses_the_same_tenant_ids(tenant: str) -> None:
    for model, fields in (
        (EmailPayload, {"to": "a@example.com", "template": "welcome"}),
        (ReportPayload, {"user_id": "u1", "report_type": "sales", "format": "pdf",
                         "date_range": {"start_date": "2025-01-01", "end_date": "2025-01-31"}}),
    ):  # fmt: skip
        with pytest.raises(PayloadError) as caught:
            validate_payload(model, {"tenant_id": tenant, **fields})
        assert ("tenant_id", TENANT_ID_RULE) in caught.value.errors


# --------------------------------------------------------------------------- signatures


def test_every_typed_function_takes_every_field_of_its_payload_model() -> None:
    functions = {name: getattr(tasks, name) for name in tasks.__all__}
    for kinds in tasks.KINDS.values():
        for kind in kinds.values():
            function = functions[kind.name.rsplit(".", 1)[1]]
            parameters = inspect.signature(function).parameters
            fields = set(kind.payload.model_fields)
            options = {"priority", "delay", "eta"}
            if function is tasks.deliver_webhook:
                options.add("replay")  # sends a deduplicated message again
            assert set(parameters) == fields | options, function.__name__
            for name in fields:  # a field with a default is optional in the function too
                required = kind.payload.model_fields[name].is_required()
                empty = parameters[name].default is inspect.Parameter.empty
                assert required == empty, (function.__name__, name)


@SQLITE
def test_import_records_takes_decimal_comma(broker: Broker) -> None:
    for value in (True, False):
        job = tasks.import_records(
            tenant_id="t1", user_id="u1", file_url="a.csv", file_type="csv",
            entity_type="leads", decimal_comma=value,
        )  # fmt: skip
        assert jobs.get(job.id).payload["decimal_comma"] is value


@pytest.mark.parametrize("user", ["", "a b", "na\x01", "x" * 65])
def test_every_job_that_names_a_user_refuses_the_same_user_ids(user: str) -> None:
    """Import, export, report and notification jobs notify the user who asked: one rule."""
    from crmqueue.payloads import ExportPayload, ImportPayload, NotificationPayload

    cases = (
        (ImportPayload, {"file_url": "a.csv", "file_type": "csv", "entity_type": "contacts"}),
        (ExportPayload, {"entity_type": "contacts", "format": "csv"}),
        (NotificationPayload, {"type": "in-app", "title": "t", "message": "m"}),
        (
            ReportPayload,
            {
                "report_type": "sales",
                "format": "pdf",
                "date_range": {"start_date": "2025-01-01", "end_date": "2025-01-31"},
            },
        ),
    )
    for model, fields in cases:
        with pytest.raises(PayloadError) as caught:
            validate_payload(model, {"tenant_id": "t1", "user_id": user, **fields})
        assert [field for field, _ in caught.value.errors] == ["user_id"], model


@pytest.mark.parametrize("zone", ["localtime", "Factory", "posixrules", "EST5EDT", "Mars/Base"])
def test_a_report_refuses_what_is_not_an_iana_area_location_zone(zone: str) -> None:
    report = {"tenant_id": "t1", "user_id": "u1", "report_type": "sales", "format": "pdf",
              "date_range": {"start_date": "2025-01-01", "end_date": "2025-01-31"}}  # fmt: skip
    with pytest.raises(PayloadError) as caught:
        validate_payload(ReportPayload, {**report, "time_zone": zone})
    assert [field for field, _ in caught.value.errors] == ["time_zone"]
    assert validate_payload(ReportPayload, {**report, "time_zone": "Europe/Berlin"})


@pytest.mark.parametrize("event", ["Contact.Created", "contact", "contact.", "a." + "b" * 99])
def test_a_bad_event_type_is_told_in_words_not_as_a_pattern(event: str) -> None:
    from crmqueue.payloads import EventPayload

    with pytest.raises(PayloadError) as caught:
        validate_payload(EventPayload, {"tenant_id": "t1", "event_type": event, "payload": {}})
    ((field, reason),) = caught.value.errors
    assert field == "event_type"
    assert reason.startswith("must be a lower-case dotted event type such as contact.created")
