"""Job ids: random (os.urandom through a per-thread buffer), unique across threads and
across a fork (a child never repeats its parent's ids)."""

from __future__ import annotations

import os
import re
import threading

import pytest

from crmqueue.engine.queues import new_job_id


def test_ids_are_32_hex_digits_and_unique_across_threads() -> None:
    found: list[list[str]] = []

    def make() -> None:
        found.append([new_job_id() for _ in range(3000)])  # several buffers each

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [job_id for batch in found for job_id in batch]
    assert len(ids) == 12_000 == len(set(ids))
    assert all(re.fullmatch(r"[0-9a-f]{32}", job_id) for job_id in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_job_id()  # the buffer is filled, with ids left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids
        os.write(write, "".join(new_job_id() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = os.read(read, 1000).decode()
    os.close(read)
    assert status == 0 and len(child) == 128
    parent = "".join(new_job_id() for _ in range(4))
    assert child != parent
