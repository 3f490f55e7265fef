"""Job events: reading the capped stream every storage writes, one event per transition.

Each JobStore writes an event in the same atomic step as the transition it records (the
job's Lua script on Redis, its transaction on SQLite; see contract.EVENT_TYPES), into one
stream per storage shared by all queues, processes and hosts. So an event is never lost
or invented, and a reader that resumes from the cursor of the last event it saw misses
none (unless the stream's cap, ``[events] max_len``, trimmed them first: then a warning
says so).

Here: :class:`Event`, :func:`follow` (the iterator behind ``crmqueue.events.subscribe``
and ``crmqueue events tail``) and :class:`ListenerHub` (in-process listeners fed from the
stream by a reader thread, through a bounded hand-off to a listener thread: a listener
never runs inside a job's write and never slows a worker). The public face is
``crmqueue.events``.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue as stdqueue
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from crmqueue.engine.storage import EVENT_TYPES, JobStore
from crmqueue.errors import CrmQueueError, StorageUnavailable

log = logging.getLogger("crmqueue.events")

# Task name -> the short kind a face knows it by ("crmqueue.workers.email.send_email" ->
# "send"); crmqueue.events fills it from crmqueue.tasks. Other names are their own kind.
SHORT_KINDS: dict[str, str] = {}


@dataclass(frozen=True)
class Event:
    """One transition of one job.

    `type` is one of EVENT_TYPES; `state` the job's state after it ("removed" once
    removed); `progress` 0-100; `attempt` the job's attempt count (1 on its first run);
    `error` "Type: message" (300 characters at most) for failed, retrying, dead,
    stalled and postponed, else None; `consumer` the consumer that made the transition
    or held the job (host:pid:suffix), None for enqueued and replayed; `at` Unix time in
    seconds (milliseconds on Redis); `cursor` where a reader resumes after it.
    """

    type: str
    job_id: str
    queue: str
    name: str
    tenant: str
    state: str
    progress: int
    attempt: int
    error: str | None
    consumer: str | None
    at: float
    cursor: str

    @property
    def kind(self) -> str:
        """The job's kind: a built-in kind's short name ("send", "export"), else the
        body's task name (module.function)."""
        return SHORT_KINDS.get(self.name, self.name)

    @classmethod
    def from_record(cls, raw: dict[str, Any]) -> Event:
        return cls(
            type=raw["type"],
            job_id=raw["id"],
            queue=raw["queue"],
            name=raw["name"],
            tenant=raw["tenant"],
            state=raw["state"],
            progress=int(raw["progress"] or 0),
            attempt=int(raw["attempt"] or 0),
            error=raw["error"] or None,
            consumer=raw["consumer"] or None,
            at=float(raw["at"]),
            cursor=raw["cursor"],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, `kind`, and `time` as ISO 8601 (UTC)."""
        data = asdict(self)
        data["kind"] = self.kind
        data["time"] = dt.datetime.fromtimestamp(self.at, dt.UTC).isoformat()
        return data


def cursor_key(cursor: str) -> tuple[int, int]:
    """A cursor of either storage as a comparable pair (SQLite "<seq>", Redis
    "<ms>-<seq>"); CrmQueueError naming it when it is neither."""
    # ASCII digits only, each part within 64 bits (int() alone would take " 3", "1_0"
    # and other scripts' digits, and any size, which the storages then refuse with a
    # traceback: SQLite's OverflowError, Redis's "Invalid stream ID").
    found = _CURSOR.fullmatch(cursor) if isinstance(cursor, str) else None
    if found is not None:
        first, second = int(found[1]), int(found[2] or 0)
        if first <= _MAX_PART and second <= _MAX_PART:
            return first, second
    raise CrmQueueError(
        f"cursor {cursor!r} is not an event cursor (SQLite: a whole number; Redis:"
        " <milliseconds>-<sequence>; 0 for the oldest kept event)"
    )


_CURSOR = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?", re.ASCII)
_MAX_PART = 2**63 - 1  # SQLite's INTEGER; a Redis stream id's parts are 64-bit unsigned


@dataclass(frozen=True)
class EventFilter:
    """Which events a reader wants; None (or empty) matches everything. `kinds` match an
    event's short kind or its task name."""

    types: frozenset[str] | None = None
    queue: str | None = None
    tenant: str | None = None
    kinds: frozenset[str] | None = None

    @classmethod
    def of(
        cls,
        types: Collection[str] | str | None = None,
        queue: str | None = None,
        tenant: str | None = None,
        kinds: Collection[str] | str | None = None,
    ) -> EventFilter:
        """Raises CrmQueueError naming an unknown event type."""
        type_set = _set(types)
        unknown = sorted((type_set or set()) - set(EVENT_TYPES))
        if unknown:
            raise CrmQueueError(
                f"unknown event type {', '.join(map(repr, unknown))}; types are"
                f" {', '.join(EVENT_TYPES)}"
            )
        return cls(type_set, queue, tenant, _set(kinds))

    def matches(self, event: Event) -> bool:
        return (
            (self.types is None or event.type in self.types)
            and (self.queue is None or event.queue == self.queue)
            and (self.tenant is None or event.tenant == self.tenant)
            and (self.kinds is None or event.name in self.kinds or event.kind in self.kinds)
        )


def _set(values: Collection[str] | str | None) -> frozenset[str] | None:
    if values is None:
        return None
    found = frozenset([values] if isinstance(values, str) else values)
    return found or None


def newest_cursor(store: JobStore) -> str:
    """The cursor of the newest event written so far ("0" style when none)."""
    return store.events_bounds()[1]


def follow(
    store: JobStore,
    cursor: str | None = None,
    where: EventFilter | None = None,
    *,
    idle_timeout: float | None = None,
    poll_seconds: float = 1.0,
    stop: threading.Event | None = None,
) -> Iterator[Event]:
    """Events after `cursor` (None: only those written from now on; "0": from the oldest
    kept), oldest first, as they are written: a blocking XREAD on Redis, on SQLite a read
    whenever the database changes (the store's data_version watcher, a few ms). Ends
    after `idle_timeout` seconds without any event `where` matches (None: never) or once
    `stop` is set; a storage outage is waited out. Resuming from an event's cursor yields
    what followed it, without gaps. Logs a warning when events after `cursor` were
    trimmed already (the stream's cap) and carries on from the oldest kept."""
    if cursor is None:
        cursor = newest_cursor(store)
    else:
        cursor_key(cursor)
        try:
            store.read_events(cursor, 1)  # a cursor of the other storage's form
        except ValueError as exc:
            raise CrmQueueError(str(exc)) from None
        newest = newest_cursor(store)
        if cursor_key(cursor) > cursor_key(newest):
            # Nothing would ever come (SQLite) or not until that time (Redis): a cursor
            # of another storage, or of one since emptied.
            raise CrmQueueError(
                f"cursor {cursor!r} is after the newest event ({newest}): not a cursor"
                " this storage gave (another storage's, or from before it was emptied?)"
            )
        _warn_if_trimmed(store, cursor)
    return _follow(store, cursor, where or EventFilter(), idle_timeout, poll_seconds, stop)


def _follow(
    store: JobStore,
    cursor: str,
    where: EventFilter,
    idle_timeout: float | None,
    poll_seconds: float,
    stop: threading.Event | None,
) -> Iterator[Event]:
    last_seen = time.monotonic()
    backoff = 0.1
    while stop is None or not stop.is_set():
        wait = poll_seconds
        if idle_timeout is not None:
            left = idle_timeout - (time.monotonic() - last_seen)
            if left <= 0:
                return
            wait = min(wait, left)
        try:
            batch = store.read_events(cursor, 500, timeout=wait)
        except StorageUnavailable as exc:
            log.warning("events: storage unreachable, retrying: %s", exc)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        backoff = 0.1
        for raw in batch:
            cursor = raw["cursor"]
            event = Event.from_record(raw)
            if where.matches(event):
                # idle means nothing for this reader: others' events do not count
                last_seen = time.monotonic()
                yield event


def _warn_if_trimmed(store: JobStore, cursor: str) -> None:
    first, _newest, trimmed = store.events_bounds()
    if cursor_key(cursor) < cursor_key(trimmed):
        log.warning(
            "events after cursor %s up to %s were trimmed before they were read (the"
            " stream keeps [events] max_len; on Redis: may have been); following from %s",
            cursor, trimmed, first,
        )  # fmt: skip


Handler = Callable[[Event], Any]


@dataclass(frozen=True)
class _Listener:
    handler: Handler
    where: EventFilter


class ListenerHub:
    """In-process listeners, fed from the storage's event stream.

    A reader thread follows the stream from the moment the first listener is added and
    hands each event to a listener thread through a queue of `queue_size` events; when
    that is full (listeners slower than the jobs), the event is dropped for the
    listeners and counted (`dropped`), with a warning at most every 10 s. A listener that
    raises is logged; nothing a listener does reaches a job. `store_source` gives the
    store to read (looked up again each round: a broker configured anew is followed
    from its newest event).
    """

    WARN_EVERY_SECONDS = 10.0

    def __init__(self, store_source: Callable[[], JobStore], queue_size: int) -> None:
        self.store_source = store_source
        self.queue_size = queue_size
        self.dropped = 0
        self.delivered = 0
        self._listeners: list[_Listener] = []
        self._lock = threading.Lock()
        self._handoff: stdqueue.Queue[Event] = stdqueue.Queue(queue_size)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_warning = 0.0
        self._ready = threading.Event()

    def add(self, handler: Handler, where: EventFilter) -> None:
        with self._lock:
            self._listeners.append(_Listener(handler, where))
            if not self._threads:
                self._start()
        self._ready.wait(5.0)  # the reader has its start cursor: nothing later is missed

    def remove(self, handler: Handler) -> int:
        """Remove every registration of `handler`; returns how many there were."""
        with self._lock:
            before = len(self._listeners)
            self._listeners = [x for x in self._listeners if x.handler != handler]
            return before - len(self._listeners)

    def _start(self) -> None:
        self._stop.clear()
        self._ready.clear()
        self._threads = [
            threading.Thread(target=self._read, name="crmqueue-events-read", daemon=True),
            threading.Thread(target=self._dispatch, name="crmqueue-events-listen", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Remove every listener and stop both threads (events not yet handed on are
        dropped)."""
        with self._lock:
            self._listeners = []
            threads, self._threads = self._threads, []
        self._stop.set()
        for thread in threads:
            thread.join(timeout)

    def _read(self) -> None:
        store: JobStore | None = None
        cursor = "0"
        backoff = 0.1
        while not self._stop.is_set():
            try:
                current = self.store_source()
                if current is not store:
                    store, cursor = current, newest_cursor(current)
                    self._ready.set()
                batch = store.read_events(cursor, 500, timeout=0.5)
            except StorageUnavailable as exc:
                log.warning("event listeners: storage unreachable, retrying: %s", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:
                log.exception("event listeners: reading the event stream failed")
                self._stop.wait(1.0)
                continue
            backoff = 0.1
            for raw in batch:
                cursor = raw["cursor"]
                try:
                    self._handoff.put_nowait(Event.from_record(raw))
                except stdqueue.Full:
                    self._count_drop()

    def _count_drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_warning >= self.WARN_EVERY_SECONDS:
            self._last_warning = now
            log.warning(
                "event listeners are behind: %d event(s) dropped so far (hand-off of %d"
                " full; [events] listener_queue)",
                self.dropped, self.queue_size,
            )  # fmt: skip

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._handoff.get(timeout=0.25)
            except stdqueue.Empty:
                continue
            with self._lock:
                listeners = list(self._listeners)
            for listener in listeners:
                if not listener.where.matches(event):
                    continue
                try:
                    listener.handler(event)
                except Exception:
                    log.exception(
                        "event listener %r raised on %s of job %s (the job is not affected)",
                        listener.handler, event.type, event.job_id,
                    )  # fmt: skip
            self.delivered += 1
