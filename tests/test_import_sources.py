"""Import sources are checked at enqueue as far as their text tells (crmqueue.url_rules):
the scheme, a path escaping the files directory, an address literal the worker's outbound
guard refuses. The producer's and the worker's rules agree. File names with '#', '?', '%',
spaces or non-ASCII letters are read, from `crmqueue import` and from import_records."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli_import_export import Cli, job_id, make_cli, summary, write_csv

from crmqueue import jobs, tasks, url_rules
from crmqueue.engine.queues import Broker
from crmqueue.errors import PayloadError, PermanentError
from crmqueue.providers import http
from crmqueue.workers.import_export import resolve_source

SQLITE = pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
IMPORT = {"tenant_id": "t1", "user_id": "u1", "file_type": "csv", "entity_type": "contacts"}

REFUSED = [
    ("../../etc/passwd", "outside the files directory"),
    ("/etc/passwd", "outside the files directory"),
    ("a/../../b.csv", "outside the files directory"),
    ("imports/../../x.csv", "outside the files directory"),
    ("..", "outside the files directory"),
    (".", "names the files directory itself"),
    ("file:///etc/passwd", "outside the files directory"),
    ("file:///etc/passwd#sheet=x", "outside the files directory"),
    ("FILE:///etc/shadow", "outside the files directory"),
    ("file://evil.example/share/x.csv", "remote host"),
    ("ftp://files.example/a.csv", "unsupported scheme 'ftp'"),
    ("gopher://x.example/", "unsupported scheme 'gopher'"),
    ("data:text/csv,a,b", "unsupported scheme 'data'"),
    ("http://169.254.169.254/latest/meta-data/", "host 169.254.169.254 is a private"),
    ("http://[::ffff:127.0.0.1]:6379/", "host ::ffff:127.0.0.1 is a private"),
    ("http://127.0.0.1/a.csv", "host 127.0.0.1 is a private"),
    ("https://10.0.0.5/a.csv", "host 10.0.0.5 is a private"),
    ("http://0x7f000001/a.csv", "host 0x7f000001 is a private"),
    ("http://2130706433/a.csv", "host 2130706433 is a private"),
    ("http://127.1/a.csv", "host 127.1 is a private"),
    ("http://[::1]/a.csv", "host ::1 is a private"),
    ("http://[64:ff9b::a9fe:a9fe]/", "is a private"),  # NAT64 of 169.254.169.254
    ("http://[2002:7f00:1::]/", "is a private"),  # 6to4 of 127.0.0.1
    ("http://user:secret@192.168.1.1/a.csv", "host 192.168.1.1 is a private"),
    ("http://[fe80::1%25eth0]/a.csv", "zone indexes"),
    ("http:///a.csv", "no host"),
]
ACCEPTED = [
    "contacts.csv",
    "imports/2026/contacts.csv",
    "x#y.csv",
    "a?b.csv",
    "100%.csv",
    "with space.csv",
    "Übersicht-Kunden-été.csv",
    "book.xlsx#sheet=Contacts",
    "https://example.com/contacts.csv",
    "http://93.184.215.14/contacts.csv",
    "http://[2606:4700::1111]/contacts.csv",
    "http://10.1.2.3/a.csv",  # inside [outbound] allowed_networks below
]


@pytest.fixture
def import_broker(make_broker: Any) -> Broker:
    broker: Broker = make_broker({"outbound.allowed_networks": ["10.1.0.0/16"]})
    return broker


@SQLITE
@pytest.mark.parametrize(("file_url", "reason"), REFUSED)
def test_every_entry_point_refuses_an_unreadable_source_at_enqueue(
    import_broker: Broker, file_url: str, reason: str
) -> None:
    payload = {**IMPORT, "file_url": file_url}
    for enqueue in (
        lambda: tasks.import_records(**payload),
        lambda: tasks.enqueue("import-export", payload, kind="import"),
        lambda: tasks.enqueue(
            "import-export", payload, kind="crmqueue.workers.import_export.import_records"
        ),
        lambda: tasks.enqueue_many("import-export", [payload], kind="import"),
    ):
        with pytest.raises(PayloadError) as caught:
            enqueue()
        ((field, text),) = caught.value.errors
        assert field.removeprefix("0.") == "file_url" and reason in text, text
        assert "secret" not in text
    assert jobs.list_jobs("import-export", "waiting") == []


@SQLITE
@pytest.mark.parametrize("file_url", ACCEPTED)
def test_sources_that_may_be_readable_are_enqueued(import_broker: Broker, file_url: str) -> None:
    job = tasks.import_records(**{**IMPORT, "file_url": file_url})
    assert jobs.get(job.id).payload["file_url"] == file_url


@SQLITE
def test_an_absolute_path_or_file_url_inside_the_files_directory_is_enqueued(
    import_broker: Broker,
) -> None:
    files = import_broker.settings.files.dir.resolve()
    for file_url in (f"{files}/a.csv", f"file://{files}/a%23b.csv", f"file://localhost{files}/x"):
        tasks.import_records(**{**IMPORT, "file_url": file_url})


ADDRESSES = st.one_of(
    st.ip_addresses(v=4),
    st.ip_addresses(v=6),
    st.sampled_from(
        [ipaddress.ip_address(a) for a in ("127.0.0.1", "10.1.2.3", "169.254.169.254",
                                           "::ffff:10.1.2.3", "64:ff9b::7f00:1", "100.64.0.1",
                                           "224.0.0.1", "::", "fd00::1", "8.8.8.8")]
    ),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(ADDRESSES, st.sampled_from([(), ("10.0.0.0/8",), ("127.0.0.0/8", "fd00::/8")]))
def test_enqueue_and_worker_agree_on_every_address_literal(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, allowed: tuple[str, ...]
) -> None:
    networks = tuple(ipaddress.ip_network(n) for n in allowed)
    host = f"[{address}]" if address.version == 6 else str(address)
    url = f"http://{host}:8080/contacts.csv"
    problem = url_rules.literal_problem(url, networks)
    try:
        http.check_url(url, allowed_networks=networks)  # a literal: no DNS
        worker_refuses = False
    except PermanentError:
        worker_refuses = True
    assert (problem is not None) == worker_refuses, (url, problem)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["dotted", "int", "hex", "short"]))
def test_loose_ipv4_forms_are_judged_as_the_c_library_reads_them(number: int, form: str) -> None:
    address = ipaddress.IPv4Address(number)
    a, b, c, d = address.packed
    text = {"dotted": str(address), "int": str(number), "hex": hex(number),
            "short": f"{a}.{b}.{c * 256 + d}"}[form]  # fmt: skip
    assert ipaddress.IPv4Address(socket.inet_aton(text)) == address
    refused = url_rules.literal_problem(f"http://{text}/") is not None
    assert refused == url_rules.is_denied(address)


NAMES = ["x#y.csv", "a?b.csv", "100%.csv", "with space.csv", "Übersicht été.csv",
         "a%23b#c?d e.csv", "日本語の連絡先.csv", "semi;colon&amp.csv"]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_the_worker_reads_a_path_as_it_is(tmp_path: Path, name: str) -> None:
    (tmp_path / "imports").mkdir()
    target = tmp_path / "imports" / name
    target.write_text("email\n", encoding="utf-8")
    assert resolve_source(f"imports/{name}", tmp_path) == (target.resolve(), None)
    assert resolve_source(f"imports/{name}#sheet=S 1", tmp_path) == (target.resolve(), "S 1")
    url = "file://" + quote(str(target))  # '#', '?', '%' and the rest as escapes
    assert resolve_source(url, tmp_path) == (target.resolve(), None)
    with pytest.raises(PermanentError, match="outside the files directory"):
        resolve_source(f"../{name}", tmp_path / "imports")


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    yield from make_cli(tmp_path, f"sqlite:///{tmp_path}/crm.db")


def test_crmqueue_import_reads_files_whatever_their_names(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "source dir #1"
    folder.mkdir()
    for number, name in enumerate([*NAMES, "book#sheet=1.csv"]):
        source = write_csv(folder / name, f"email\np{number}@example.com\n")
        result = cli.ok(cli.import_(source))
        assert summary(result)["new"] == 1, (name, result.stdout, cli.consumer_log())
        assert f"job {job_id(result)} completed" in result.stderr
    assert len(cli.rows()) == len(NAMES) + 1
