"""crmqueue.group_commit.GroupCommit: one writer thread per process batches the items of
many threads; every caller of a failed batch learns the error; groups by key; the thread
ends when idle and starts again, also in a forked child."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import pytest
from conftest import wait_until

from crmqueue.group_commit import GroupCommit


@dataclass
class Item:
    value: int
    key: str = "a"
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def test_a_burst_is_written_in_few_batches_and_every_caller_returns_after_its_write() -> None:
    written: list[list[int]] = []
    gate = threading.Event()

    def write(batch: list[Item]) -> None:
        gate.wait(10)  # hold the first batch so that the others pile up
        written.append([item.value for item in batch])

    commit: GroupCommit[Item] = GroupCommit(write, name="gc-burst", batch=8)
    items = [Item(n) for n in range(20)]
    threads = [threading.Thread(target=commit.submit, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(_threads("gc-burst")) == 1)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert sorted(v for batch in written for v in batch) == list(range(20))
    assert max(len(batch) for batch in written) == 8  # capped at `batch`
    assert len(written) < 20
    assert all(item.done.is_set() and item.error is None for item in items)


def test_a_failed_write_raises_in_every_caller_and_finish_sees_it() -> None:
    finished: list[tuple[int, str]] = []

    def write(batch: list[Item]) -> None:
        raise RuntimeError("disk full")

    commit: GroupCommit[Item] = GroupCommit(
        write,
        name="gc-fail",
        finish=lambda item: finished.append((item.value, type(item.error).__name__)),
    )
    with pytest.raises(RuntimeError, match="disk full"):
        commit.submit(Item(1))
    waiting = Item(2)
    commit.submit_nowait(waiting)  # returns at once; done and error come later
    assert waiting.done.wait(10)
    assert isinstance(waiting.error, RuntimeError)
    assert finished == [(1, "RuntimeError"), (2, "RuntimeError")]


def test_an_error_the_write_sets_on_one_item_reaches_only_that_caller() -> None:
    def write(batch: list[Item]) -> None:
        for item in batch:
            if item.value < 0:
                item.error = ValueError(f"bad {item.value}")

    commit: GroupCommit[Item] = GroupCommit(write, name="gc-own")
    commit.submit(Item(1))
    with pytest.raises(ValueError, match="bad -1"):
        commit.submit(Item(-1))


def test_a_batch_is_split_by_key_one_write_per_group() -> None:
    gate = threading.Event()
    written: list[tuple[str, ...]] = []

    def write(batch: list[Item]) -> None:
        gate.wait(10)
        written.append(tuple(item.key for item in batch))

    commit: GroupCommit[Item] = GroupCommit(write, name="gc-key", key=lambda item: item.key)
    first = Item(0, "x")
    commit.submit_nowait(first)  # held in write: the rest arrive as one batch
    rest = [Item(n, key) for n, key in enumerate("abab", 1)]
    for item in rest:
        commit.submit_nowait(item)
    gate.set()
    for item in [first, *rest]:
        assert item.done.wait(10)
    assert written == [("x",), ("a", "a"), ("b", "b")]


def test_the_thread_ends_when_idle_and_starts_again_on_demand() -> None:
    commit: GroupCommit[Item] = GroupCommit(lambda batch: None, name="gc-idle", idle_seconds=0.05)
    commit.submit(Item(1))
    wait_until(lambda: not _threads("gc-idle"), message="the idle writer thread to end")
    again = Item(2)
    commit.submit(again)  # served by a new thread (it would hang without one)
    assert again.done.is_set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_writer_thread() -> None:
    written: list[int] = []
    commit: GroupCommit[Item] = GroupCommit(
        lambda batch: written.extend(item.value for item in batch), name="gc-fork"
    )
    commit.submit(Item(1))  # the parent's thread is running at the fork
    pid = os.fork()
    if pid == 0:  # the child: no writer thread was inherited; a submit must not hang
        code = 1
        try:
            done = threading.Event()

            def child() -> None:
                commit.submit(Item(2))
                done.set()

            threading.Thread(target=child, daemon=True).start()
            code = 0 if done.wait(10) and written[-1] == 2 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert written == [1]
