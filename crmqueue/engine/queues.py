"""Queues: one Huey instance per queue over a leased JobStore, and the job bodies they run.

A job body is a plain function registered with :func:`job`; its Huey task name
(``module.function``) is its identity on the wire, so it never moves once released.
Producers enqueue by name and never import the body's module.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel

from crmqueue import json_text
from crmqueue.config import QUEUE_NAMES, QueueSettings, Settings, load_settings
from crmqueue.engine.huey_api import HueyMessages, QueueHuey, huey
from crmqueue.engine.huey_api import UnknownTask as UnknownTask
from crmqueue.engine.quotas import quota_policy
from crmqueue.engine.storage import JobStore, NewJob, open_store
from crmqueue.errors import ConfigError, PayloadError, PermanentError
from crmqueue.tenancy import tenant_problem

F = TypeVar("F", bound=Callable[..., Any])
JsonMessages = HueyMessages  # the name it had before Huey's API (crmqueue bodies' messages)


@dataclass(frozen=True)
class Body:
    queue: str
    name: str
    func: Callable[..., Any]
    payload: type[BaseModel] | None


BODIES: dict[str, Body] = {}


def job(queue: str, payload: type[BaseModel] | None = None) -> Callable[[F], F]:
    """Register a job body for `queue`. The body gets the validated payload model
    (or the raw dict when no model is given); a payload that fails validation in the
    worker is a permanent failure."""
    if queue not in QUEUE_NAMES:
        raise ConfigError(f"unknown queue {queue!r}; queues are {', '.join(QUEUE_NAMES)}")

    def register(func: F) -> F:
        name = f"{func.__module__}.{func.__name__}"
        BODIES[name] = Body(queue, name, func, payload)
        return func

    return register


def _runner(body: Body) -> Callable[..., Any]:
    @functools.wraps(body.func)
    def run(**data: Any) -> Any:
        if body.payload is None:
            return body.func(data)
        try:
            model = body.payload.model_validate(data)
        except Exception as exc:
            raise PermanentError(f"payload failed validation in the worker: {exc}") from exc
        return body.func(model)

    return run


class EncodedPayload(NamedTuple):
    """A payload its producer validated and encoded as JSON, checked as encode_message
    checks a mapping (crmqueue.tasks does it with crmqueue.payloads.payload_json): stored
    as it is, without a second encode. (A tuple: built on every enqueue, 3x cheaper than a
    frozen dataclass.)"""

    tenant_id: str
    json: bytes


def encode_message(job_id: str, name: str, payload: Mapping[str, Any] | EncodedPayload) -> bytes:
    """The stored message: compact JSON of id, name and payload. Raises PayloadError
    naming each field whose text or value no attempt could use (see
    crmqueue.json_text.encode)."""
    if isinstance(payload, EncodedPayload):
        # Our ids are hex: only a caller's own id can need JSON escapes.
        quoted = b'"%s"' % job_id.encode() if job_id.isalnum() else json.dumps(job_id).encode()
        return b'{"id":%s,"name":%s,"payload":%s}' % (quoted, _name_json(name), payload.json)
    return json_text.encode({"id": job_id, "name": name, "payload": dict(payload)}, "payload")


class _RandomBytes(threading.local):
    """This thread's buffer of os.urandom bytes for job ids."""

    data = b""
    offset = 0


_random = _RandomBytes()


def _fresh_random() -> None:
    global _random
    _random = _RandomBytes()


# A forked child starts with an empty buffer: it never repeats its parent's ids.
os.register_at_fork(after_in_child=_fresh_random)


def new_job_id() -> str:
    """A random job id: 128 bits from os.urandom as 32 hex digits (as random as uuid4).
    The bytes come from a buffer of this thread, one system call for 256 ids instead of
    one each: measured 0.7-1.1 µs an id against 1.6 µs (a system call is dear on a
    virtual machine)."""
    random = _random
    offset = random.offset
    if offset >= len(random.data):
        random.data, offset = os.urandom(4096), 0
    random.offset = offset + 16
    return random.data[offset : offset + 16].hex()


@functools.lru_cache(maxsize=1024)
def _name_json(name: str) -> bytes:
    return json.dumps(name).encode()


MAX_DELAY = 10 * 366 * 86400.0  # seconds, ten years: a longer delay (or eta) is a mistake
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
# A tenant id as the payload models take it (crmqueue.payloads.TenantId): checked here for
# payloads enqueued by name, which no model validates before the worker.


def run_at(delay: object, eta: object) -> float | None:
    """When a job scheduled by `delay` (seconds from now) or `eta` (a datetime; a naive
    one is local time, as in Python) runs, as a Unix time; None for now. Raises
    PayloadError naming `delay` or `eta`: both given, a wrong type, NaN, a negative delay,
    or a time more than ten years (MAX_DELAY) away."""
    if eta is not None:
        if delay is not None:
            raise PayloadError([("eta", "give delay or eta, not both")])
        if not isinstance(eta, dt.datetime):
            raise PayloadError(
                [("eta", f"must be a datetime (date and time), not {type(eta).__name__}")]
            )
        try:
            when = eta.timestamp()
        except (OverflowError, ValueError, OSError) as exc:  # e.g. datetime.min, max
            raise PayloadError([("eta", f"{eta!s} is not a usable time: {exc}")]) from None
        if not abs(when - time.time()) < MAX_DELAY:
            raise PayloadError([("eta", f"{eta!s} is more than ten years from now")])
        return when
    if delay is None:
        return None
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise PayloadError([("delay", f"must be a number of seconds, not {type(delay).__name__}")])
    # NaN or infinity would be a job that never runs (or a store that errs).
    if not 0 <= delay < MAX_DELAY:
        raise PayloadError([("delay", f"must be seconds from 0 to {MAX_DELAY:.0f}, not {delay}")])
    return time.time() + delay if delay else None


@dataclass(frozen=True)
class Enqueue:
    """One job to enqueue; see Queue.enqueue for the fields."""

    name: str
    payload: Mapping[str, Any] | EncodedPayload
    priority: int | None = None
    delay: float | None = None
    eta: dt.datetime | None = None
    job_id: str | None = None

    def fields(self) -> tuple[Any, ...]:
        return (self.name, self.payload, self.priority, self.delay, self.eta, self.job_id)


class Queue:
    """One queue: its settings, its Huey instance and its leased storage."""

    def __init__(self, name: str, settings: Settings, store: JobStore) -> None:
        self.name = name
        self.spec: QueueSettings = settings.queues.get(name)
        self.store = store
        # Daily quotas (crmqueue.engine.quotas): None when no tenant has one on this queue.
        self.quotas = quota_policy(name, settings)
        self.huey: QueueHuey = huey(name)
        self.huey.bind(store, self.spec)
        for body in bodies_for(name):
            if body.name not in self.huey._registry._registry:
                self.huey.task(name=body.func.__name__, crmqueue_body=True)(_runner(body))

    @property
    def has_bodies(self) -> bool:
        """Whether this process runs any job body or Huey task of this queue."""
        if any(body.queue == self.name for body in BODIES.values()):
            return True
        # Huey tasks (not crmqueue bodies, which BODIES lists) registered on the instance.
        tasks = self.huey._registry._registry.values()
        return any(not getattr(task, "crmqueue_body", False) for task in tasks)

    def _new_job(
        self,
        name: str,
        payload: Mapping[str, Any] | EncodedPayload,
        priority: int | None = None,
        delay: float | None = None,
        eta: dt.datetime | None = None,
        job_id: str | None = None,
    ) -> NewJob:
        if isinstance(payload, EncodedPayload):  # its model checked the tenant id
            tenant = payload.tenant_id
        else:
            given = payload.get("tenant_id")
            problem = tenant_problem(given)
            if problem is not None:
                raise PayloadError([("tenant_id", problem)])
            tenant = str(given)
        priority = self.spec.priority if priority is None else priority
        if type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise PayloadError(
                [("priority", f"must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}")]
            )
        when = run_at(delay, eta) if delay is not None or eta is not None else None
        job_id = job_id or new_job_id()
        return NewJob(
            id=job_id,
            queue=self.name,
            name=name,
            tenant=tenant,
            priority=priority,
            max_attempts=self.spec.attempts,
            message=encode_message(job_id, name, payload),
            run_at=when,
        )

    def enqueue(
        self,
        name: str,
        payload: Mapping[str, Any] | EncodedPayload,
        *,
        priority: int | None = None,
        delay: float | None = None,
        eta: dt.datetime | None = None,
        job_id: str | None = None,
    ) -> str:
        """Store one job; returns its id. `delay` (seconds) or `eta` schedules it (see
        `run_at`). Raises PayloadError naming the tenant_id, priority, delay or eta, or
        each field whose text no attempt could use (see `encode_message`)."""
        new = self._new_job(name, payload, priority, delay, eta, job_id)
        if self.quotas is None:
            self.store.enqueue_jobs((new,))
        else:
            self.store.enqueue_jobs((new,), quotas=self.quotas.for_jobs((new,)))
        return new.id

    def enqueue_many(self, items: Sequence[Enqueue], *, skip_existing: bool = False) -> list[str]:
        """Store many jobs in one round trip per batch; returns their ids in order. Nothing
        is stored if any item is refused (PayloadError: each field path starts with the
        item's index). `skip_existing`: an item whose job_id is stored already is not
        stored again (see JobStore.enqueue_jobs)."""
        jobs, errors = [], []
        for index, item in enumerate(items):
            try:
                jobs.append(self._new_job(*item.fields()))
            except PayloadError as exc:
                errors += [(f"{index}.{field}", reason) for field, reason in exc.errors]
        if errors:
            raise PayloadError(errors)
        if self.quotas is not None:
            # QuotaExceeded (a PayloadError): nothing stored.
            quotas = self.quotas.for_jobs(jobs)
            self.store.enqueue_jobs(jobs, skip_existing=skip_existing, quotas=quotas)
        elif skip_existing:
            self.store.enqueue_jobs(jobs, skip_existing=True)
        else:
            self.store.enqueue_jobs(jobs)
        return [j.id for j in jobs]


def bodies_for(queue: str) -> list[Body]:
    return [body for body in BODIES.values() if body.queue == queue]


class Broker:
    """The five queues over one storage, built from settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        url, timeout = settings.storage.url, settings.storage.connect_timeout_seconds
        events = settings.events.max_len
        self.queues = {
            name: Queue(name, settings, open_store(url, name, timeout, events))
            for name in QUEUE_NAMES
        }

    def queue(self, name: str) -> Queue:
        if name not in self.queues:
            raise ConfigError(f"unknown queue {name!r}; queues are {', '.join(QUEUE_NAMES)}")
        return self.queues[name]

    def find_job(self, job_id: str) -> tuple[Queue, dict[str, Any]] | None:
        # Job ids are unique across queues and every store reads the shared records.
        record = self.queues["email"].store.get_job(job_id)
        if record is None:
            return None
        return self.queues[record["queue"]], record


_broker: Broker | None = None
_broker_guard = threading.Lock()


def configure(settings: Settings | None = None) -> Broker:
    """Set the process-wide broker (from settings, else from the environment's config)."""
    global _broker
    with _broker_guard:
        _broker = Broker(settings or load_settings())
        return _broker


def get_broker() -> Broker:
    """The process-wide broker, configured on first use from CRMQUEUE_CONFIG or defaults."""
    if _broker is None:
        return configure()
    return _broker
