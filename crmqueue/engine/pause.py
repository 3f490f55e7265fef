"""Pausing a queue: consumers stop claiming from it until it is resumed.

The flag is a key-value record of the queue's own storage (``paused``: the SQLite ``kv``
table, or the Redis key ``crmqueue:q:<queue>:kv:paused``), so every consumer process on
every host sees it. Consumers read it through :class:`PauseCheck`, at most once a second
a queue; jobs already claimed run to the end.
"""

from __future__ import annotations

import contextlib
import time

from crmqueue.engine.storage import JobStore
from crmqueue.errors import StorageUnavailable

PAUSED_KEY = "paused"
CHECK_SECONDS = 1.0  # how stale a consumer's reading may be


def pause(store: JobStore) -> None:
    """Pause the queue of `store` (idempotent). StorageUnavailable."""
    store.put_data(PAUSED_KEY, b"1")


def resume(store: JobStore) -> None:
    """Resume the queue of `store` (idempotent). StorageUnavailable."""
    store.delete_data(PAUSED_KEY)


def is_paused(store: JobStore) -> bool:
    """Whether the queue of `store` is paused now (one storage read). StorageUnavailable."""
    return bool(store.has_data_for_key(PAUSED_KEY))


class PauseCheck:
    """A consumer's cached reading of the paused flag: one storage read per `max_age`
    seconds. An unreachable storage keeps the last reading (the claim that follows
    reports the outage)."""

    def __init__(self, store: JobStore, max_age: float = CHECK_SECONDS) -> None:
        self.store = store
        self.max_age = max_age
        self._paused = False
        self._read_at = float("-inf")

    def paused(self) -> bool:
        now = time.monotonic()
        if now - self._read_at >= self.max_age:
            with contextlib.suppress(StorageUnavailable):
                self._paused = is_paused(self.store)
            self._read_at = now
        return self._paused
