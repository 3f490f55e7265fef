"""Huey's own API on crmqueue's queues: each queue's Huey instance is a full Huey.

``crmqueue.engine.huey("webhook")`` returns the queue's process-wide :class:`QueueHuey`.
``@h.task(...)``, ``@h.periodic_task(crontab(...))``, ``h.lock_task``, hooks, signals,
pipelines, revocation, results and ``h.put``/``h.get`` work as in Huey; what differs:

- Messages are jobs of crmqueue's leased registry (stats, ``jobs show``, dead letters,
  leases): a claimed message stays stored until acknowledged, so a consumer killed
  mid-task loses nothing (the reaper hands the job back when its lease ends).
- Messages are JSON, not pickle: arguments JSON cannot carry are refused when the task
  is called (PayloadError naming ``args.N`` or ``kwargs.NAME``). Results and ``h.put``
  values keep tuples, datetimes, dates, timedeltas, bytes, sets and Huey's ``Error``
  (tagged JSON); another object is kept as its ``repr``.
- Retries are crmqueue's attempts (see :func:`retry_plan`): a task's ``retries=N`` gives
  N + 1 attempts; a task without retries gets the queue's ``attempts``.

The crmqueue runner runs a claimed Huey message through Huey's execute path (revocation,
expiry, pre/post hooks, signals, result store, pipelines) and records the outcome in the
registry; Huey's own ``h.dequeue()`` + ``h.execute(task)`` does the same acknowledgement.
"""

from __future__ import annotations

import base64
import contextvars
import datetime as dt
import functools
import json
import os
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import huey as huey_lib
from huey.api import ResultGroup, Task, TaskWrapper, chord, group
from huey.constants import EmptyData
from huey.exceptions import RateLimitExceeded, RetryTask
from huey.registry import Message
from huey.serializer import Serializer
from huey.utils import SKIPPED, Error

from crmqueue import json_text
from crmqueue.engine.storage.contract import PRIORITY_LIMIT, NewJob
from crmqueue.errors import PayloadError, PermanentError, Postpone, RetryableError
from crmqueue.tenancy import tenant_problem

if TYPE_CHECKING:
    from crmqueue.config import QueueSettings
    from crmqueue.engine.storage import Claim, JobStore

__all__ = ["HueyMessages", "PeriodicScheduler", "QueueHuey", "UnknownTask", "huey", "retry_plan"]


class UnknownTask(PermanentError):
    """A message names a job body this worker does not have: dead at once (it would fail
    the same way on every attempt), with the name in its error."""


# --- values: tagged JSON -------------------------------------------------------------

_SCALARS = (str, int, float, bool, type(None))


def tag(value: Any, allow_pickle: bool = False) -> Any:
    """`value` as JSON data, tuples, datetimes, dates, timedeltas, bytes, sets and Huey's
    Error tagged (``{"~t": [...]}`` ...); any other object as ``{"~repr": "..."}``, or,
    with `allow_pickle` (the queue's huey_pickle), pickled (``{"~pickle": base64}``)."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list):
        return [tag(item, allow_pickle) for item in value]
    if isinstance(value, Error):  # a namedtuple: before tuples
        return {"~err": tag(value.metadata, allow_pickle)}
    if value is SKIPPED:
        return {"~skipped": 1}
    if isinstance(value, tuple):
        return {"~t": [tag(item, allow_pickle) for item in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("~") for k in value):
            return {k: tag(v, allow_pickle) for k, v in value.items()}
        return {"~d": [[tag(k, allow_pickle), tag(v, allow_pickle)] for k, v in value.items()]}
    if isinstance(value, dt.datetime):
        return {"~dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"~date": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"~td": value.total_seconds()}
    if isinstance(value, bytes):
        return {"~b": base64.b64encode(value).decode()}
    if isinstance(value, set | frozenset):
        return {"~s": [tag(item, allow_pickle) for item in value]}
    if allow_pickle:
        return {"~pickle": base64.b64encode(pickle.dumps(value)).decode()}
    return {"~repr": repr(value)}


class PickleRefused(PermanentError):
    """Stored data is pickled but this queue does not allow pickle (huey_pickle = false)."""


def _unpickle(data: str, allow_pickle: bool) -> Any:
    if not allow_pickle:
        raise PickleRefused(
            "pickled data on a queue whose huey_pickle is off: not unpickled (unpickling"
            " runs code); turn huey_pickle on for this queue only if every writer is trusted"
        )
    return pickle.loads(base64.b64decode(data))  # opted in per queue (huey_pickle)


_UNTAG: dict[str, Callable[[Any, bool], Any]] = {
    "~t": lambda v, p: tuple(untag(i, p) for i in v),
    "~d": lambda v, p: {untag(k, p): untag(x, p) for k, x in v},
    "~dt": lambda v, p: dt.datetime.fromisoformat(v),
    "~date": lambda v, p: dt.date.fromisoformat(v),
    "~td": lambda v, p: dt.timedelta(seconds=v),
    "~b": lambda v, p: base64.b64decode(v),
    "~s": lambda v, p: {untag(i, p) for i in v},
    "~err": lambda v, p: Error(untag(v, p)),
    "~repr": lambda v, p: str(v),
    "~skipped": lambda v, p: SKIPPED,
    "~pickle": _unpickle,
}


def untag(data: Any, allow_pickle: bool = False) -> Any:
    """The value `tag` stored (PickleRefused for pickled data without `allow_pickle`)."""
    if isinstance(data, list):
        return [untag(item, allow_pickle) for item in data]
    if isinstance(data, dict):
        if len(data) == 1:
            (key, value), *_ = data.items()
            if key in _UNTAG:
                return _UNTAG[key](value, allow_pickle)
        return {k: untag(v, allow_pickle) for k, v in data.items()}
    return data


# --- messages ------------------------------------------------------------------------


class TaskFailure(Exception):
    """What an ``on_error`` handler (or a chord callback) receives for a task's exception:
    JSON messages carry its type name, text and repr, not the exception object."""

    def __init__(self, type_name: str, text: str, representation: str) -> None:
        super().__init__(text)
        self.type_name = type_name
        self.representation = representation

    def __repr__(self) -> str:
        return self.representation


@functools.lru_cache(maxsize=256)
def _failure_class(type_name: str) -> type[TaskFailure]:
    """A TaskFailure subclass named as the original exception type (``ValueError``), so
    a handler that looks at ``type(exc).__name__`` sees the name it expects."""
    return type(type_name.rsplit(".", 1)[-1], (TaskFailure,), {"__module__": __name__})


@functools.lru_cache(maxsize=256)
def _as(base: type[Exception], type_name: str) -> Any:
    """A subclass of crmqueue's `base` (RetryableError, PermanentError) named as a Huey
    task's exception, so the job's errors show the task's own exception type."""
    return type(type_name, (base,), {"__module__": __name__})


_INTERNAL_TAGS = ("~exc", "~err", "~skipped", "~lit")


def _looks_internal(value: Any) -> bool:
    """A one-key dict whose key is one of `_internal`'s tags: a caller's own dict that
    must be escaped (``{"~lit": value}``) to arrive as it was given."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _INTERNAL_TAGS


def _needs_internal(args: Any) -> bool:
    return isinstance(args, list | tuple) and any(
        isinstance(arg, BaseException | list | tuple) or arg is SKIPPED or _looks_internal(arg)
        for arg in args
    )


def _internal(value: Any) -> Any:
    """Huey's own values among a message's arguments (an error handler's exception, a chord
    callback's Error and SKIPPED results) as tagged JSON; anything else as it is."""
    if isinstance(value, BaseException):
        name = f"{type(value).__module__}.{type(value).__qualname__}"
        return {"~exc": [name, str(value), repr(value)]}
    if isinstance(value, Error):
        return {"~err": tag(value.metadata)}
    if value is SKIPPED:
        return {"~skipped": 1}
    if isinstance(value, list | tuple):
        return [_internal(item) for item in value]
    if _looks_internal(value):
        return {"~lit": value}
    return value


def _from_internal(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        if "~lit" in value:
            return value["~lit"]
        if "~exc" in value:
            return _failure_class(value["~exc"][0])(*value["~exc"])
        if "~err" in value:
            return Error(untag(value["~err"]))
        if "~skipped" in value:
            return SKIPPED
    if isinstance(value, list):
        return [_from_internal(item) for item in value]
    return value


def _message_dict(
    message: Message, internal: bool = False, pickled: bool = False
) -> dict[str, Any]:
    if pickled:  # huey_pickle: the arguments pickled, the rest as JSON
        args = tuple(message.args) if isinstance(message.args, list | tuple) else message.args
        dumped = pickle.dumps((args, message.kwargs))
        tenant = message.kwargs.get("tenant_id") if message.kwargs else None
        message = message._replace(
            args=(), kwargs={"tenant_id": tenant} if isinstance(tenant, str) else {}
        )
        plain = _message_dict(message, internal, pickled=False)
        for key, nested in (("on_complete", message.on_complete), ("on_error", message.on_error)):
            if nested is not None:
                plain["huey"][key] = _message_dict(nested, internal, pickled=True)
        plain.setdefault("huey", {})["pickle"] = base64.b64encode(dumped).decode()
        return plain
    options: dict[str, Any] = {}
    if message.args:
        args = message.args
        args = list(args) if isinstance(args, list | tuple) else args
        options["args"] = _internal(args) if internal else args
    for name in ("retries", "retry_delay", "retry_backoff", "priority"):
        value = getattr(message, name)
        if value:
            options[name] = value
    if message.timeout is not None:
        options["timeout"] = message.timeout
    for name in ("eta", "expires", "expires_resolved"):
        value = getattr(message, name)
        if value is not None:
            options[name] = tag(value)
    if message.on_complete is not None:
        options["on_complete"] = _message_dict(message.on_complete, internal, pickled)
    if message.on_error is not None:
        options["on_error"] = _message_dict(message.on_error, internal, pickled)
    if message.chord_config is not None:
        cid, size, idx, callback = message.chord_config
        options["chord"] = [cid, size, idx, _message_dict(callback, internal, pickled)]
    data: dict[str, Any] = {"id": message.id, "name": message.name, "payload": message.kwargs}
    if options:
        data["huey"] = options
    return data


def _message_from(data: dict[str, Any], allow_pickle: bool = False) -> Message:
    options = data.get("huey")
    if not options:  # crmqueue's own form: keyword arguments only
        return Message(id=data["id"], name=data["name"], args=(), kwargs=data["payload"])
    chord = options.get("chord")
    if "pickle" in options:  # huey_pickle: the arguments, pickled
        args, kwargs = _unpickle(options["pickle"], allow_pickle)
        data = {**data, "payload": kwargs}
        options = {**options, "args": list(args)}
    return Message(
        id=data["id"],
        name=data["name"],
        eta=untag(options.get("eta")),
        retries=options.get("retries"),
        retry_delay=options.get("retry_delay"),
        priority=options.get("priority"),
        args=_message_args(options.get("args", ())),
        kwargs=data["payload"],
        on_complete=(
            _message_from(options["on_complete"], allow_pickle)
            if "on_complete" in options
            else None
        ),
        on_error=(
            _message_from(options["on_error"], allow_pickle) if "on_error" in options else None
        ),
        expires=untag(options.get("expires")),
        expires_resolved=untag(options.get("expires_resolved")),
        timeout=options.get("timeout"),
        chord_config=(
            (chord[0], chord[1], chord[2], _message_from(chord[3], allow_pickle)) if chord else None
        ),
        retry_backoff=options.get("retry_backoff"),
    )


def _message_args(args: Any) -> Any:
    if not isinstance(args, list):
        return args
    if any(isinstance(arg, dict | list) for arg in args):
        return tuple(_from_internal(arg) for arg in args)
    return tuple(args)


def _argument_problems(message: Message) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    while message is not None:
        args = message.args if isinstance(message.args, list | tuple) else [message.args]
        errors += json_text.problems({"args": _internal(args), "kwargs": message.kwargs})
        message = message.on_complete
    return errors


class HueyMessages(Serializer):  # type: ignore[misc]
    """Messages as JSON (id, name, payload = keyword arguments, and ``huey``: positional
    arguments and Huey's options when there are any): a crmqueue job body's message is
    exactly crmqueue's. Other data (results, ``put`` values, revocations) as tagged JSON
    under ``v`` (see `tag`). With `allow_pickle` (the queue's ``huey_pickle``), arguments
    and values JSON cannot carry are pickled; without it, pickled data read from storage
    raises PickleRefused."""

    def __init__(self, allow_pickle: bool = False) -> None:
        super().__init__()
        self.allow_pickle = allow_pickle

    def serialize(self, data: Any) -> bytes:
        if isinstance(data, Message):
            if not _needs_internal(data.args):
                try:
                    return json_text.encode(_message_dict(data), "payload")
                except PayloadError:
                    pass
            try:  # an error handler's exception, a chord's results (see _internal)
                return json_text.encode(_message_dict(data, internal=True), "payload")
            except PayloadError:
                if self.allow_pickle:
                    return json_text.encode(_message_dict(data, True, pickled=True), "payload")
                errors = _argument_problems(data)
                raise PayloadError(
                    [(f"{data.name}: {field}", reason) for field, reason in errors]
                    + [
                        (
                            "arguments",
                            "JSON only: this queue does not pickle (huey_pickle is off: see"
                            " README, Huey's API on crmqueue's queues)",
                        )
                    ]
                ) from None
        if isinstance(data, _SCALARS):
            return b'{"v":%s}' % json.dumps(data).encode()
        return json.dumps({"v": tag(data, self.allow_pickle)}, separators=(",", ":")).encode()

    def deserialize(self, data: bytes) -> Any:
        loaded = json.loads(data)
        if not isinstance(loaded, dict):
            raise ValueError("not a crmqueue message or value")
        if "v" in loaded and "id" not in loaded:
            return untag(loaded["v"], self.allow_pickle)
        if not isinstance(loaded.get("payload"), dict):
            raise ValueError("message is not a crmqueue job message")
        return _message_from(loaded, self.allow_pickle)


# --- retries -------------------------------------------------------------------------


def retry_plan(task: Task, attempt: int, retry_eta: dt.datetime | None, utc: bool) -> float | None:
    """Seconds until the next attempt of a Huey task that asked to be retried, or None for
    the queue's backoff. A RetryTask's eta/delay wins; then the task's ``retry_delay``
    (times ``retry_backoff`` ** (attempt - 1), as Huey grows it); a RetryableError's
    ``delay`` is applied by the runner (crmqueue.engine.retry.next_delay) and wins over
    both."""
    if retry_eta is not None:
        now = dt.datetime.now(dt.UTC) if utc else dt.datetime.now()
        if utc:
            retry_eta = retry_eta.replace(tzinfo=dt.UTC)
        return max(0.0, (retry_eta - now).total_seconds())
    if task.retry_delay:
        factor = task.retry_backoff ** max(attempt - 1, 0) if task.retry_backoff else 1
        return float(task.retry_delay * factor)
    return None


@dataclass
class _Outcome:
    claim: Claim | None
    runner: bool  # True inside the crmqueue runner, which records the outcome itself
    exception: BaseException | None = None
    retry: bool = False
    postpone: bool = False  # RetryTask, a rate limit: Huey spends no retry on them
    delay: float | None = None
    interrupted: bool = False
    revoke_flag: bool = True  # whether the task's own revocation key may exist


_OUTCOME: contextvars.ContextVar[_Outcome | None] = contextvars.ContextVar(
    "crmqueue_huey_outcome", default=None
)


@functools.lru_cache(maxsize=4096)
def _task_name(task_class: Any) -> str:
    return f"{task_class.__module__}.{task_class.__name__}"


def _encode_plain(task_id: str, name: str, kwargs: dict[str, Any], serializer: Any) -> bytes:
    try:
        return json_text.encode({"id": task_id, "name": name, "payload": kwargs}, "payload")
    except PayloadError:  # name each refused argument, or pickle them (see serialize)
        message = Message(id=task_id, name=name, args=(), kwargs=kwargs)
        return bytes(serializer.serialize(message))


# The keyword arguments TaskWrapper.s() takes as options of the call, not of the task.
_CALL_OPTIONS = frozenset(
    ("eta", "delay", "id", "retries", "retry_delay", "retry_backoff", "priority", "expires",
     "timeout")
)  # fmt: skip


class HueyTaskWrapper(TaskWrapper):  # type: ignore[misc]
    """Huey's task wrapper; its tasks run through QueueHuey when the crmqueue runner runs
    them, and a PermanentError or PayloadError ends their retries."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _CALL_OPTIONS.isdisjoint(kwargs):  # no per-call options: s() would pop none
            return self.huey.enqueue(self.task_class(args, kwargs))
        return super().__call__(*args, **kwargs)

    def create_task(
        self, func: Callable[..., Any], context: bool = False, name: Any = None, **settings: Any
    ) -> Any:
        task_class: Any = super().create_task(func, context, name, **settings)
        raw = task_class.execute
        owner = self.huey

        if settings.get("crmqueue_body"):
            return task_class  # a crmqueue job body: run as it is, by the runner
        task_class.create_id = _new_id

        def execute(task: Task) -> Any:
            if _OUTCOME.get() is None:
                active = _runner_job()
                if active is not None and active.claim.id == task.id:
                    return owner.run_claimed(task, active.claim)
            try:
                return raw(task)
            except (PermanentError, PayloadError):
                task.retries = 0
                raise

        task_class.execute = execute
        return task_class


def _new_id(task: Task) -> str:
    """A task id as crmqueue's job ids: 32 hex digits, as random as uuid4, 4x cheaper."""
    return os.urandom(16).hex()


_runner_current: Any = None


def _runner_job() -> Any:
    """The crmqueue runner's job running in this context, if any (the runner imports this
    module, so its context variable is looked up on first use)."""
    global _runner_current
    if _runner_current is None:
        from crmqueue.engine import runner

        _runner_current = runner._current
    return _runner_current.get()


class QueueHuey(huey_lib.Huey):  # type: ignore[misc]
    """A queue's Huey over its leased JobStore (bound lazily: importing a task module
    opens no storage)."""

    def __init__(
        self,
        name: str,
        store: JobStore | None = None,
        spec: QueueSettings | None = None,
        **options: Any,
    ) -> None:
        self._store: JobStore | None = None
        self.spec: QueueSettings | None = None
        self.result_ttl: float | None = None
        self._bind_guard = threading.Lock()
        options.setdefault("results", True)
        # A result handle waits for the final outcome, not an attempt that will be retried.
        options.setdefault("store_intermediate_errors", False)
        super().__init__(name, serializer=HueyMessages(), **options)
        if store is not None:
            self.bind(store, spec)

    # storage -------------------------------------------------------------------------
    def bind(self, store: JobStore, spec: QueueSettings | None = None) -> None:
        """Use `store` (and the queue's settings `spec`) from now on."""
        store.huey_utc = self.utc
        if spec is not None:
            self.spec = spec
            store.huey_lease_seconds = spec.lease_seconds
            store.huey_attempts = spec.attempts
            store.huey_priority = spec.priority
            self.serializer.allow_pickle = spec.huey_pickle
            self.result_ttl = float(spec.keep_completed_seconds) or None
        self._store = store
        self._revocations_until = 0.0  # another storage: look again

    def create_storage(self) -> Any:
        if self._immediate and self.immediate_use_memory:
            return self.get_immediate_storage()
        return None  # see the storage property

    @property
    def storage(self) -> Any:
        if self._immediate and self.immediate_use_memory:
            return self._memory
        if self._store is None:
            with self._bind_guard:
                if self._store is None:
                    from crmqueue.engine.queues import get_broker

                    get_broker()  # binds every queue's instance
        return self._store

    @storage.setter
    def storage(self, value: Any) -> None:
        self._memory = value

    def get_task_wrapper_class(self) -> type:
        return HueyTaskWrapper

    # messages ------------------------------------------------------------------------
    def deserialize_task(self, data: bytes) -> Any:
        """The task of a stored message; UnknownTask when this process has no body of
        that name on this queue (a producer may enqueue any name without importing it)."""
        message = self.serializer.deserialize(data)
        if message.name not in self._registry._registry:
            raise UnknownTask(
                f"job body {message.name!r} not found on queue {self.name!r} in this worker:"
                " add its module to [runner] imports (or fix the name the producer used),"
                " then replay the job (crmqueue dlq replay)"
            )
        return self._registry.create_task(message)

    def enqueue(self, task: Any) -> Any:
        """Huey's enqueue: the task (and, when it runs, each pipeline step) becomes a job
        of the registry; returns Huey's Result (or ResultGroup). Raises PayloadError for
        arguments JSON cannot carry (nothing is stored)."""
        if self._immediate or isinstance(task, group | chord):
            return super().enqueue(task)
        if task.expires:
            task.resolve_expires(self.utc)
        self._emit(huey_lib.signals.SIGNAL_ENQUEUED, task)
        if (
            task.on_complete is None
            and task.on_error is None
            and task.chord_config is None
            and not (task.args or task.eta or task.expires or task.retries)
            and not (task.retry_delay or task.retry_backoff or task.priority)
            and task.timeout is None
            and "task" not in task.kwargs
        ):
            # A plain call (keyword arguments only): the message is crmqueue's own form.
            name = _task_name(task.__class__)
            data = _encode_plain(task.id, name, task.kwargs, self.serializer)
        else:
            message = self._registry.create_message(task)
            name = message.name
            data = self.serializer.serialize(message)
        store = self.storage
        kwargs = task.kwargs
        tenant = kwargs.get("tenant_id", "-") if kwargs else "-"
        if tenant != "-" and tenant_problem(tenant) is not None:
            tenant = "-"
        priority = store.huey_priority if task.priority is None else int(task.priority)
        job = NewJob(
            id=task.id,
            queue=store.name,
            name=name,
            tenant=tenant,
            priority=max(-PRIORITY_LIMIT, min(PRIORITY_LIMIT, priority)),
            max_attempts=task.retries + 1 if task.retries else store.huey_attempts,
            message=data,
            run_at=store.huey_timestamp(task.eta) if task.eta is not None else None,
        )
        store.huey_enqueue(job)
        if not self.results:
            return None
        results = self._pipeline_results(task)
        return ResultGroup(results) if len(results) > 1 else results[0]

    def dequeue(self) -> Any:
        """Huey's dequeue: the next due message, claimed under a lease (see
        HueyStorageMixin.dequeue); its ``retries`` are the attempts it has left."""
        data = self.storage.dequeue()
        if data is None:
            return None
        task = self.deserialize_task(data)
        claim = self.storage._huey_claims().get(task.id)
        if claim is not None:
            task.retries = max(claim.max_attempts - claim.attempts, 0)
        return task

    def scheduled(self, limit: int | None = None) -> list[Task]:
        """Huey's scheduled(): jobs waiting for their time (scheduled, and retries not yet
        due), each with the eta and retries left that its registry record holds."""
        now = time.time()
        store = self.storage
        records = store.list_jobs("scheduled", limit or 10_000)
        records += [r for r in store.list_jobs("delayed", limit or 10_000) if r["run_at"] > now]
        records.sort(key=lambda r: r["run_at"] or 0.0)
        tasks = []
        for record in records[: limit or None]:
            try:
                task = self.deserialize_task(bytes(record["message"]))
            except Exception:
                continue  # Huey skips what it cannot deserialize too
            task.eta = self._eta(record["run_at"])
            if record["attempts"]:
                task.retries = max(record["max_attempts"] - record["attempts"] - 1, 0)
            tasks.append(task)
        return tasks

    def _eta(self, when: float | None) -> dt.datetime | None:
        if when is None:
            return None
        if self.utc:
            return dt.datetime.fromtimestamp(when, dt.UTC).replace(tzinfo=None)
        return dt.datetime.fromtimestamp(when)

    def put_result(self, key: str, data: Any) -> Any:
        outcome = _OUTCOME.get()
        value = self.serializer.serialize(data)
        if outcome is not None and outcome.runner and not isinstance(data, Error):
            from crmqueue.engine.runner import record_with_completion

            record_with_completion(key, value, self.result_ttl)
            return None
        if self.result_ttl and not self._immediate:
            self.storage.delete_data(key)
            return self.storage.put_if_empty(key, value, self.result_ttl)
        return self.storage.put_data(key, value, is_result=True)

    # execution -----------------------------------------------------------------------
    def execute(self, task: Task, timestamp: dt.datetime | None = None) -> Any:
        """Huey's execute; a message this process claimed with dequeue() is acknowledged
        in the registry afterwards (completed, retried after its delay, or dead)."""
        claim = None
        if not self._immediate and _OUTCOME.get() is None:
            claim = self.storage.take_huey_claim(task.id)
        if claim is None:
            return super().execute(task, timestamp)
        outcome = _Outcome(claim, runner=False)
        value = self._run(task, claim, outcome, timestamp)
        self._acknowledge(claim, outcome, value)
        return value

    def run_claimed(self, task: Task, claim: Claim) -> Any:
        """Run a task the crmqueue runner claimed; failures are raised for the runner to
        record (RetryableError with Huey's delay, PermanentError when Huey gives up
        before the attempts run out, else the task's own exception)."""
        outcome = _Outcome(claim, runner=True)
        value = self._run(task, claim, outcome, None)
        exc = outcome.exception
        if outcome.interrupted:
            raise KeyboardInterrupt
        if exc is None:
            return tag(value)
        text = f"{type(exc).__name__}: {exc}"
        if outcome.postpone:
            raise Postpone(text, outcome.delay or 0.0) from exc
        # The registry records the task's own exception type and text (see _as).
        if outcome.retry and outcome.delay is not None:
            raise _as(RetryableError, type(exc).__name__)(str(exc), outcome.delay) from exc
        if not outcome.retry and claim.attempts < claim.max_attempts:
            raise _as(PermanentError, type(exc).__name__)(str(exc)) from exc
        if isinstance(exc, Exception):
            raise exc
        raise RuntimeError(text) from exc

    def _run(self, task: Task, claim: Claim, outcome: _Outcome, timestamp: Any) -> Any:
        task.retries = max(claim.max_attempts - claim.attempts, 0)
        task.eta = None  # the store ran it when due
        if claim.attempts > 1 and self.results:
            self.delete(task.id)  # an earlier attempt's error
        token = _OUTCOME.set(outcome)
        try:
            return super().execute(task, timestamp)
        finally:
            _OUTCOME.reset(token)

    def _acknowledge(self, claim: Claim, outcome: _Outcome, value: Any) -> None:
        from crmqueue.engine.storage import error_record

        store = self.storage
        exc = outcome.exception
        if outcome.interrupted:
            store.release(claim)
        elif outcome.postpone:
            store.postpone(claim, outcome.delay or 0.0, f"{type(exc).__name__}: {exc}")
        elif exc is None:
            store.complete(claim, tag(value), int(self.result_ttl or 3600))
        else:
            error = error_record(type(exc).__name__, str(exc))
            store.fail(claim, error, (outcome.delay or 0.0) if outcome.retry else None)

    # How long a consumer trusts "no revocations in this queue" before reading it again:
    # a revocation from another process reaches a task that starts within this many
    # seconds of it only after them (one from this process, at once).
    REVOCATIONS_CHECK_SECONDS = 1.0

    def put(self, key: str, data: Any) -> Any:
        if key.startswith(("r:", "rt:")) and not self._immediate:
            self._revocations_until = 0.0
            self._any_revocations = True
            self.storage.huey_note_revocation(key, True)
        return super().put(key, data)

    def _revocations_possible(self) -> bool:
        now = time.monotonic()
        if now >= getattr(self, "_revocations_until", 0.0):
            self._any_revocations = self.storage.huey_any_revocations()
            self._revocations_until = now + self.REVOCATIONS_CHECK_SECONDS
        return bool(self._any_revocations)

    def is_revoked(self, task: Any, timestamp: Any = None, peek: bool = True) -> bool:
        outcome = _OUTCOME.get()
        if outcome is None or peek or not isinstance(task, Task):
            return bool(super().is_revoked(task, timestamp, peek))
        if not self._revocations_possible():
            outcome.revoke_flag = False
            return False
        # Huey's own check before a run, in one read; it notes whether the task's own
        # flag was there, so that the delete after the run can be skipped when it was not.
        keys = self._revoke_keys(task)
        data = self.storage.peek_many(keys)
        outcome.revoke_flag = task.revoke_id in data
        revoked = False
        for key in keys:
            is_revoked, restore = self._check_revoked(data.get(key, EmptyData), timestamp, peek)
            if restore:
                self.delete(key)
            revoked = revoked or is_revoked
        return revoked

    def delete(self, key: str) -> Any:
        outcome = _OUTCOME.get()
        if outcome is not None and not outcome.revoke_flag and key.startswith("r:"):
            # Huey clears a run task's own revocation flag; there was none when it
            # started (a revocation while it ran stays, as a finished task's key).
            return False
        deleted = super().delete(key)
        if key.startswith(("r:", "rt:")) and not self._immediate:
            self.storage.huey_note_revocation(key, False)
        return deleted

    def _emit(self, signal: str, task: Task, *args: Any, **kwargs: Any) -> None:
        if signal == huey_lib.signals.SIGNAL_INTERRUPTED:
            outcome = _OUTCOME.get()
            if outcome is not None:
                outcome.interrupted = True
        receivers = self._signal.receivers
        if receivers["any"] or receivers.get(signal):  # most instances have no handlers
            super()._emit(signal, task, *args, **kwargs)

    def _run_post_execute(self, task: Task, task_value: Any, exception: Any) -> None:
        outcome = _OUTCOME.get()
        if outcome is not None:
            outcome.exception = exception
        super()._run_post_execute(task, task_value, exception)

    def _requeue_task(self, task: Task, timestamp: Any, retry_eta: Any = None) -> None:
        outcome = _OUTCOME.get()
        if outcome is None or outcome.claim is None:
            return super()._requeue_task(task, timestamp, retry_eta)  # type: ignore[no-any-return]
        outcome.retry = True
        outcome.delay = retry_plan(task, outcome.claim.attempts, retry_eta, self.utc)
        exc = outcome.exception
        outcome.postpone = isinstance(exc, RetryTask) or (
            isinstance(exc, RateLimitExceeded) and bool(exc.retry)
        )
        return None

    def add_schedule(self, task: Task) -> None:
        outcome = _OUTCOME.get()
        if outcome is not None and outcome.claim is not None and task.id == outcome.claim.id:
            outcome.retry = True  # not due yet by this clock: run it at its eta
            outcome.delay = retry_plan(task, 0, task.eta, self.utc)
            return
        data = self.serialize_task(task)
        eta = task.eta or dt.datetime.fromtimestamp(0)
        self.storage.add_to_schedule(data, eta, task.priority)
        self._emit(huey_lib.signals.SIGNAL_SCHEDULED, task)


class PeriodicScheduler:
    """Enqueues the occurrences of the periodic tasks (``@h.periodic_task``) of some
    queues, once per minute that their ``validate_datetime`` accepts (the minute as Huey's
    consumer gives it: naive UTC when the instance is ``utc``, else local time).

    Every consumer runs one for its own queues: the ones that import the task modules.
    Each occurrence is a job with a deterministic id (``periodic:<task>:<YYYYmmddHHMM>``)
    enqueued with skip_existing, so however many consumers offer it, it is one job and
    runs once; a minute no consumer was up for is skipped, as in Huey."""

    def __init__(self) -> None:
        self._done: dict[str, int] = {}  # queue name -> last minute offered

    def tick(self, queues: Any, now: float | None = None) -> list[str]:
        """Offer the current minute's occurrences; returns their job ids."""
        now = time.time() if now is None else now
        minute = int(now // 60)
        offered: list[str] = []
        for queue in queues:
            h = queue.huey
            if self._done.get(queue.name) == minute or not h._registry._periodic_tasks:
                continue
            stamp = h._eta(minute * 60.0)
            for task in h._registry.periodic_tasks:
                if task.validate_datetime(stamp):
                    name = h._registry.task_to_string(type(task))
                    task.id = f"periodic:{name}:{stamp:%Y%m%d%H%M}"
                    task.revoke_id = f"r:{task.id}"
                    h.enqueue(task)
                    offered.append(task.id)
            self._done[queue.name] = minute
        return offered


_HUEYS: dict[str, QueueHuey] = {}
_HUEYS_GUARD = threading.Lock()


def huey(queue: str) -> QueueHuey:
    """The process-wide Huey instance of `queue` (one of crmqueue's queues): decorate
    tasks with it as with any Huey. Its storage is the configured queue storage, opened
    on first use (see crmqueue.engine.configure). Raises ConfigError for an unknown queue."""
    from crmqueue.config import QUEUE_NAMES
    from crmqueue.errors import ConfigError

    if queue not in QUEUE_NAMES:
        raise ConfigError(f"unknown queue {queue!r}; queues are {', '.join(QUEUE_NAMES)}")
    with _HUEYS_GUARD:
        instance = _HUEYS.get(queue)
        if instance is None:
            instance = _HUEYS[queue] = QueueHuey(queue)
        return instance
