"""Group commit: the threads of a process hand items to one writer thread, which writes
every item waiting in one batch (one transaction) and then wakes their threads. With one
item at a time the batch is one item; under load, one commit serves many.

Used by the in-app notification store (crmqueue.notifications) and the webhook delivery
log (crmqueue.webhooks). The writer thread starts on demand, ends after `idle_seconds`
with nothing to write, and starts again on demand, also in a forked child (a child
inherits no threads: the inbox is per process id)."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar


class Pending(Protocol):
    """What an item carries: `done`, set once it is written (or failed), and `error`,
    what writing it raised (None when written)."""

    done: threading.Event
    error: BaseException | None


T = TypeVar("T", bound=Pending)


class GroupCommit(Generic[T]):
    """One writer thread per process for `write(batch)`, which writes a list of up to
    `batch` items (1 or more) in one go. If `write` raises (an Exception), every item of
    the batch gets that error; `write` may also set an item's own `error` (e.g. when it
    falls back to writing items one by one). With `key`, a batch is split into groups of
    equal key, written one `write` call each, in the order of their first item; the items
    of a group are finished (`finish(item)`, then `done` set) before the next group is
    written. `name` names the thread; `idle_seconds` (seconds) is how long it waits for
    work before it ends."""

    def __init__(
        self,
        write: Callable[[list[T]], None],
        *,
        name: str,
        batch: int = 256,
        idle_seconds: float = 5.0,
        key: Callable[[T], Hashable] | None = None,
        finish: Callable[[T], None] | None = None,
    ) -> None:
        self._write = write
        self.name = name
        self.batch = batch
        self.idle_seconds = idle_seconds
        self._key = key
        self._finish = finish
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue[T] | None = None
        self._pid = 0

    def submit(self, item: T) -> None:
        """Write `item` with the next batch and return once it is written; raises what
        writing it raised."""
        self.submit_nowait(item)
        item.done.wait()
        if item.error is not None:
            raise item.error

    def submit_nowait(self, item: T) -> None:
        """Queue `item` for the next batch; its `done` is set once it is written (or
        failed: its `error`)."""
        with self._lock:  # put under the lock: the thread cannot end in between
            if self._inbox is None or self._pid != os.getpid():
                self._inbox, self._pid = queue.SimpleQueue(), os.getpid()
                threading.Thread(
                    target=self._run, args=(self._inbox,), name=self.name, daemon=True
                ).start()
            self._inbox.put(item)

    def _run(self, inbox: queue.SimpleQueue[T]) -> None:
        while True:
            try:
                batch = [inbox.get(timeout=self.idle_seconds)]
            except queue.Empty:
                with self._lock:
                    if inbox.empty():
                        if self._inbox is inbox:
                            self._inbox = None
                        return
                continue
            while len(batch) < self.batch:
                try:
                    batch.append(inbox.get_nowait())
                except queue.Empty:
                    break
            if self._key is None:
                self._commit(batch)
                continue
            groups: dict[Hashable, list[T]] = {}
            for item in batch:
                groups.setdefault(self._key(item), []).append(item)
            for group in groups.values():
                self._commit(group)

    def _commit(self, group: list[T]) -> None:
        try:
            self._write(group)
        except Exception as exc:  # the transaction failed: every caller learns it
            for item in group:
                item.error = exc
        for item in group:
            if self._finish is not None:
                self._finish(item)
            item.done.set()
