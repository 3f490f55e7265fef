"""Whole-exchange deadlines of the guarded HTTP path (crmqueue.providers.http): an import
source's download cut off at its deadline however slowly the server sends, the import
body's deadline inside its queue's time limit, and the one watchdog thread serving every
deadline of a process (no thread per request). A real loopback HTTP server."""

from __future__ import annotations

import ipaddress
import threading
import time
from pathlib import Path

import pytest
from test_webhook_delivery import receiver as receiver  # the loopback receiver fixture

from crmqueue.config import load_settings
from crmqueue.errors import RetryableError
from crmqueue.providers import http
from crmqueue.workers.import_export import download_deadline
from tests.webhook_receiver import Plan, WebhookReceiver

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
CSV = b"email,first_name\n" + b"".join(b"a%d@example.com,A\n" % n for n in range(40))


@pytest.mark.parametrize("drip_headers", [False, True], ids=["body", "headers"])
def test_a_dripping_download_ends_at_its_deadline_and_leaves_no_file(
    receiver: WebhookReceiver, tmp_path: Path, drip_headers: bool
) -> None:
    """A byte every 0.1 s never trips the 1 s read timeout; the 0.6 s deadline ends it."""
    receiver.endpoint("/slow.csv", (), Plan(200, body=CSV, drip=0.1, drip_headers=drip_headers))
    dest = tmp_path / "in" / "slow.csv"
    began = time.monotonic()
    with pytest.raises(RetryableError, match=r"did not finish answering within 0\.6 s"):
        http.download(
            receiver.url("/slow.csv"), dest, max_bytes=1 << 20, allowed_networks=LOOPBACK,
            timeout=1.0, what="import source", deadline=0.6,
        )  # fmt: skip
    took = time.monotonic() - began
    assert 0.5 <= took < 2.0, took  # not len(CSV) x 0.1 s
    assert not dest.exists()
    assert not dest.parent.exists() or not list(dest.parent.iterdir())  # no partial file


def test_a_download_within_its_deadline_is_whole_and_the_connection_kept(
    receiver: WebhookReceiver, tmp_path: Path
) -> None:
    receiver.endpoint("/quick.csv", (), Plan(200, body=CSV))
    for n in range(3):
        dest = tmp_path / f"quick{n}.csv"
        size = http.download(
            receiver.url("/quick.csv"), dest, max_bytes=1 << 20, allowed_networks=LOOPBACK,
            deadline=0.3,
        )  # fmt: skip
        assert size == len(CSV) and dest.read_bytes() == CSV
    time.sleep(0.4)  # past every deadline above: a late watchdog would break the next
    dest = tmp_path / "after.csv"
    assert http.download(receiver.url("/quick.csv"), dest, max_bytes=1 << 20,
                         allowed_networks=LOOPBACK) == len(CSV)  # fmt: skip


def test_the_import_download_deadline_stays_inside_the_queue_time_limit() -> None:
    default = load_settings(None, environ={})
    assert default.files.download_timeout_seconds == 120.0
    assert download_deadline(default) == 120.0  # the queue's 300 s limit leaves it
    short = load_settings(None, overrides={"queues.import-export.timeout_seconds": 60},
                          environ={})  # fmt: skip
    assert download_deadline(short) == 30.0  # half the limit: the import needs the rest
    tight = load_settings(None, overrides={"files.download_timeout_seconds": 5}, environ={})
    assert download_deadline(tight) == 5.0


def test_one_watchdog_thread_serves_every_deadline(receiver: WebhookReceiver) -> None:
    """Many requests with deadlines, from several threads at once: one watchdog thread
    in all (none started per request), and every answer whole."""
    receiver.endpoint("/hook", (), Plan(200, body=b"fine"))
    url = receiver.url("/hook")
    answers: list[int] = []
    lock = threading.Lock()

    def send(count: int) -> None:
        for _ in range(count):
            answer = http.guarded_request(
                "POST", url, allowed_networks=LOOPBACK, body=b"{}", deadline=5.0
            )
            with lock:
                answers.append(answer.status if answer.data == b"fine" else -1)

    threads = [threading.Thread(target=send, args=(25,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == [200] * 100
    watchdogs = [t for t in threading.enumerate() if t.name == "http-deadlines"]
    assert len(watchdogs) == 1
    assert not any(t.name.startswith("Thread-") and "Timer" in type(t).__name__
                   for t in threading.enumerate())  # fmt: skip
