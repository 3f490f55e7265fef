"""Job events: listen to, or follow, every transition of every job.

Each transition (enqueued, active, progress, completed, failed, retrying, dead, stalled,
removed, replayed; also postponed and released) is written as an event to a capped
stream in the queue storage, in the same atomic step as the transition itself, by
whichever process or host makes it. So listeners and subscribers see the jobs of all
consumers, and an event is never lost or invented::

    from crmqueue import events

    events.on("failed", lambda e: print(e.job_id, e.error), queue="email")
    events.on_any(audit)                       # every event of every queue

    for event in events.subscribe(queue="report", tenant="t1"):   # blocks, follows live
        print(event.type, event.job_id, event.progress, event.cursor)

    for event in events.subscribe(cursor=saved_cursor):          # resume without gaps
        ...

Listeners run in this process on a listener thread of their own, fed from the stream:
a listener that raises is logged and changes nothing for any job, and a slow one never
slows a worker (when the hand-off of ``[events] listener_queue`` events is full, newer
events are dropped for the listeners and counted in :func:`dropped`). The stream keeps
about ``[events] max_len`` events. See :class:`Event` for the fields.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator

from crmqueue.engine import events as _engine
from crmqueue.engine.events import Event, EventFilter, Handler, ListenerHub, cursor_key
from crmqueue.engine.queues import get_broker
from crmqueue.engine.storage import EVENT_TYPES, JobStore
from crmqueue.tasks import KINDS

__all__ = [
    "EVENT_TYPES",
    "Event",
    "close",
    "dropped",
    "latest_cursor",
    "off",
    "on",
    "on_any",
    "subscribe",
]

_engine.SHORT_KINDS.update(
    {entry.name: kind for kinds in KINDS.values() for kind, entry in kinds.items()}
)
# The notification queue's follow-up jobs (one per channel of a notification job): not
# kinds a producer enqueues, but what `events tail --kind sms` / `--kind push` should
# find. The names are crmqueue.workers.notification.SMS_TASK and workers.push.SEND_PUSH
# (not imported here: that would load worker-side libraries into every producer).
_engine.SHORT_KINDS.update(
    {
        "crmqueue.workers.notification.send_sms": "sms",
        "crmqueue.workers.push.send_push": "push",
    }
)

_hub: ListenerHub | None = None
_hub_guard = threading.Lock()


def _store() -> JobStore:
    # One stream per storage, shared by all queues: any queue's store reads it.
    return get_broker().queue("email").store


def _listeners() -> ListenerHub:
    global _hub
    with _hub_guard:
        if _hub is None:
            _hub = ListenerHub(_store, get_broker().settings.events.listener_queue)
        return _hub


def on(
    event_type: str | Collection[str],
    handler: Handler,
    *,
    queue: str | None = None,
    tenant: str | None = None,
    kind: str | None = None,
) -> Handler:
    """Call `handler(event)` for every event of `event_type` (one of EVENT_TYPES, or
    several) written from now on, optionally only of one queue, tenant or job kind (a
    built-in kind such as "export", or a body's task name). Returns `handler`. Raises
    CrmQueueError naming an unknown event type."""
    _listeners().add(handler, EventFilter.of(event_type, queue, tenant, kind))
    return handler


def on_any(
    handler: Handler,
    *,
    queue: str | None = None,
    tenant: str | None = None,
    kind: str | None = None,
) -> Handler:
    """Call `handler(event)` for every event written from now on (optionally of one
    queue, tenant or kind). Returns `handler`."""
    _listeners().add(handler, EventFilter.of(None, queue, tenant, kind))
    return handler


def off(handler: Handler) -> int:
    """Stop calling `handler`; returns how many registrations it had."""
    return 0 if _hub is None else _hub.remove(handler)


def close() -> None:
    """Remove every listener and stop the listener threads."""
    global _hub
    with _hub_guard:
        hub, _hub = _hub, None
    if hub is not None:
        hub.close()


def dropped() -> int:
    """Events dropped for this process's listeners because they fell behind."""
    return 0 if _hub is None else _hub.dropped


def latest_cursor() -> str:
    """The cursor of the newest event so far: subscribe(cursor=...) from it yields what
    comes after."""
    return _engine.newest_cursor(_store())


def subscribe(
    queue: str | None = None,
    tenant: str | None = None,
    kind: str | None = None,
    cursor: str | None = None,
    *,
    types: str | Collection[str] | None = None,
    idle_timeout: float | None = None,
) -> Iterator[Event]:
    """Follow the events live, oldest first: a blocking iterator over events after
    `cursor` (None: from now on; "0": from the oldest the stream still keeps),
    optionally only of a queue, tenant, job kind or event type(s). Each event's `cursor`
    resumes after it without gaps (a warning is logged if the stream's cap trimmed
    events before they were read). Stops after `idle_timeout` seconds without any event
    it yields (None: never). Raises CrmQueueError for a malformed cursor or unknown event type."""
    if cursor is not None:
        cursor_key(cursor)
    where = EventFilter.of(types, queue, tenant, kind)
    if queue is not None:
        get_broker().queue(queue)  # an unknown queue is an error, not silence
    return _engine.follow(_store(), cursor, where, idle_timeout=idle_timeout)
