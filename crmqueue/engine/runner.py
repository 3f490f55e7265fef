"""The consumer: per queue one fetcher thread claiming leased jobs for a pool of worker
threads, plus one maintenance thread per process (lease renewal, heartbeats, and, on the
elected leader only, reaping, retention sweeps and health checks)."""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import json
import logging
import math
import os
import queue as stdqueue
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from crmqueue.engine.huey_api import PeriodicScheduler
from crmqueue.engine.limits import TimeLimiter
from crmqueue.engine.pause import PauseCheck
from crmqueue.engine.queues import MAX_DELAY, Broker, Queue
from crmqueue.engine.retry import next_delay
from crmqueue.engine.storage import Claim, KeptRecord, error_record
from crmqueue.engine.storage.contract import storable_text
from crmqueue.errors import CrmQueueError, Postpone, StorageUnavailable

log = logging.getLogger("crmqueue.runner")
T = TypeVar("T")

LEADER_LOCK = "maintenance-leader"


@dataclass
class ActiveJob:
    claim: Claim
    queue: Queue
    consumer: str
    touched: float = field(default_factory=time.monotonic)
    progress: int = 0
    records: list[KeptRecord] = field(default_factory=list)
    started: float = 0.0  # monotonic, when a worker began it (0: prefetched, waiting)
    done: bool = False  # its body succeeded; the completion is being written
    # Events its completion waits for before it is written (complete_after).
    barriers: list[threading.Event] = field(default_factory=list)


_current: contextvars.ContextVar[ActiveJob | None] = contextvars.ContextVar(
    "crmqueue_job", default=None
)


def report_progress(percent: float) -> None:
    """Record the running job's progress (0-100); also renews its lease."""
    active = _current.get()
    if active is None:
        raise CrmQueueError("report_progress() called outside a running job")
    value = max(0, min(100, int(percent)))
    if value == active.progress:
        return
    active.progress = value
    active.queue.store.touch(active.claim, active.queue.spec.lease_seconds, value)
    active.touched = time.monotonic()


def current_job_id() -> str | None:
    active = _current.get()
    return active.claim.id if active else None


def current_job_priority() -> int | None:
    """The running job's priority as it was claimed, or None outside a running job."""
    active = _current.get()
    return active.claim.priority if active else None


def current_attempt() -> tuple[int, int]:
    """(attempt number, max attempts) of the running job: 1-based, postponements not
    counted (see crmqueue.errors.Postpone). Outside a running job (a body called
    directly): (1, 1), a single attempt."""
    active = _current.get()
    if active is None:
        return 1, 1
    return active.claim.attempts, active.claim.max_attempts


def job_ran_before() -> bool:
    """Whether an earlier claim of the running job may have run its body (it failed, was
    reaped or handed back): only then need a body with side effects look for traces of
    that run. True outside a running job, where nothing is known."""
    active = _current.get()
    return active is None or not active.claim.first_run


def record_with_completion(key: str, value: bytes, ttl: float | None = None) -> None:
    """Store `key` (if empty, as put_if_empty) in the same write that records the running
    job's completion: no extra round trip, and, like the completion, it waits out a
    storage outage. It is stored even if the job's lease was lost meanwhile, because what
    it records (an email the vendor accepted, say) did happen. If the job fails instead,
    nothing is stored."""
    active = _current.get()
    if active is None:
        raise CrmQueueError("record_with_completion() called outside a running job")
    active.records.append(KeptRecord(key, value, ttl))


# How long a completion waits for a complete_after() event before it is written anyway.
BARRIER_SECONDS = 60.0


def complete_after(done: threading.Event) -> None:
    """Write the running job's completion (if it succeeds) only once `done` is set, at
    most BARRIER_SECONDS later: a body that hands a record of its own to another thread
    (a delivery log's group commit) returns at once, and the job is still never recorded
    as completed before that record is written (a crash loses no record of a completed
    job). Outside a running job (a body called directly), waits for `done` here."""
    active = _current.get()
    if active is None:
        done.wait(BARRIER_SECONDS)
        return
    active.barriers.append(done)


class OutageLog:
    """Logs a storage outage once when it starts and once when it ends."""

    def __init__(self) -> None:
        self._down = False
        self._lock = threading.Lock()

    def down(self, exc: Exception) -> None:
        with self._lock:
            if not self._down:
                self._down = True
                log.error("storage unreachable, retrying with backoff: %s", exc)

    def up(self) -> None:
        if self._down:
            with self._lock:
                if self._down:
                    self._down = False
                    log.warning("storage reachable again")


class CompletionRecorder:
    """Group commit without holding the workers: a worker whose job succeeded hands the
    completion over and takes its next job at once; this thread writes every completion
    waiting in one transaction (SQLite) or one script call (Redis) while the previous
    write was in flight. Until its completion is written a job stays in the runner's
    `inflight` (its lease is renewed, a stopping consumer waits for it, and it is never
    handed back: its body ran), and its outcome line is logged once it is written. Its
    worker slot frees only then: a slow write holds back claims, not workers."""

    MAX_BATCH = 256

    def __init__(self, runner: QueueRunner) -> None:
        self.runner = runner
        self._pending: stdqueue.SimpleQueue[_Completion | None] = stdqueue.SimpleQueue()
        self._stopped = False
        self._lock = threading.Lock()

    def submit(self, item: _Completion) -> None:
        """Queue `item` for the next write; once the recorder has stopped (a job that
        outlived its consumer's stop), write it in this thread."""
        with self._lock:
            queued = not self._stopped
            if queued:
                self._pending.put(item)
        if not queued:
            self._write([item])

    def _write(self, batch: list[_Completion]) -> None:
        for item in batch:
            for barrier in item.active.barriers:
                if not barrier.wait(BARRIER_SECONDS):
                    log.error(
                        "job %s: a record its completion waits for was not written within"
                        " %.0f s; recording the completion all the same",
                        item.active.claim.id, BARRIER_SECONDS,
                    )  # fmt: skip
        runner = self.runner
        store = runner.queue.store
        keep = runner.queue.spec.keep_completed_seconds
        done = [(item.active.claim, item.result) for item in batch]
        records = [record for item in batch for record in item.active.records]
        try:
            owned = runner._persist(functools.partial(store.complete_many, done, keep, records))
        except Exception:
            log.exception("could not record %d completed job(s)", len(batch))
            owned = [False] * len(batch)
        with runner._handoff:
            for item in batch:
                runner._forget(item.active)
        runner._give_back(len(batch))
        if log.isEnabledFor(logging.INFO):
            now = time.monotonic()
            for item, flag in zip(batch, owned, strict=True):
                runner._log_outcome(
                    item.active, item.tenant, "completed" if flag else "lease-lost", now
                )

    def run(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.MAX_BATCH:
                try:
                    item = self._pending.get_nowait()
                except stdqueue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._write(batch)
            if stop:
                return

    def stop(self) -> None:
        """Write what is queued, then end the thread; later completions write themselves."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._pending.put(None)


@dataclass
class _Completion:
    active: ActiveJob
    result: Any
    tenant: str


class QueueRunner:
    """One queue's fetcher, worker and completion-recorder threads inside a consumer.

    The fetcher claims jobs for the free workers and up to `prefetch` more
    (``[queues.<name>] prefetch``), so that a worker finishing a job finds the next one
    waiting instead of waiting for a claim's round trip. A prefetched job is in `inflight`
    from its claim: its lease is renewed like a running job's, and a stopping consumer
    hands it back unstarted at once."""

    def __init__(
        self, queue: Queue, consumer: str, workers: int, outage: OutageLog, limiter: TimeLimiter
    ) -> None:
        self.queue = queue
        self.limiter = limiter
        self.consumer = consumer
        self.workers = workers if queue.has_bodies else 0
        self.prefetch = queue.spec.prefetch if self.workers else 0
        self.outage = outage
        self.stopping = threading.Event()
        self._handoff = threading.Lock()
        self.inflight: dict[str, ActiveJob] = {}
        # One slot per job claimed and not yet recorded: running, waiting for a worker
        # (prefetched) or finished with its completion not yet written. So a consumer that
        # dies can have run at most workers + prefetch jobs that run again elsewhere.
        self._capacity = self.workers + self.prefetch
        self._slots = threading.Semaphore(self._capacity)
        self._inbox: stdqueue.SimpleQueue[ActiveJob | None] = stdqueue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.recorder = CompletionRecorder(self)
        self._pause = PauseCheck(queue.store)  # crmqueue queues pause|resume

    def start(self) -> None:
        if not self.workers:
            log.warning("queue %s has no job bodies yet: its jobs wait", self.queue.name)
            return
        name = self.queue.name
        self._threads.append(
            threading.Thread(target=self._fetch_loop, name=f"{name}-fetch", daemon=True)
        )
        self._threads.append(
            threading.Thread(target=self.recorder.run, name=f"{name}-record", daemon=True)
        )
        for index in range(self.workers):
            self._threads.append(
                threading.Thread(target=self._work_loop, name=f"{name}-{index}", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def _fetch_loop(self) -> None:
        backoff = 0.1
        store, spec = self.queue.store, self.queue.spec
        while not self.stopping.is_set():
            if not self._slots.acquire(timeout=0.25):
                continue
            if self.stopping.is_set():  # woken by wind_down(): claim nothing more
                return
            if self._pause.paused():  # a paused queue: claim nothing, look again soon
                self._give_back(1)
                self.stopping.wait(0.25)
                continue
            free = self._gather(1)
            try:
                result = store.claim(self.consumer, spec.lease_seconds, free)
            except StorageUnavailable as exc:
                self._give_back(free)
                self.outage.down(exc)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            self.outage.up()
            self._give_back(free - len(result.jobs))
            with self._handoff:
                if self.stopping.is_set():
                    # stop() began while we claimed: the workers may be gone already, so
                    # hand these back now rather than leave them active until the reaper.
                    self._hand_back(result.jobs)
                    return
                for claim in result.jobs:
                    active = ActiveJob(claim, self.queue, self.consumer)
                    self.inflight[claim.id] = active
                    self._inbox.put(active)
            if not result.jobs:
                timeout = 1.0
                if result.next_due is not None:
                    timeout = min(timeout, max(result.next_due - time.time(), 0.0))
                if timeout > 0:
                    try:
                        store.wait_for_jobs(timeout)
                    except StorageUnavailable as exc:
                        self.outage.down(exc)
                        self.stopping.wait(backoff)

    def _gather(self, free: int) -> int:
        """More free slots for one claim: all free now and, while the workers still have
        prefetched jobs to start, those freeing within a few ms up to half the prefetch,
        so that one round trip claims several jobs instead of one per finished job."""
        capacity = self._capacity
        while free < capacity and self._slots.acquire(blocking=False):
            free += 1
        batch = max(1, self.prefetch // 2)
        while free < batch and self._inbox.qsize() > 0 and not self.stopping.is_set():
            if not self._slots.acquire(timeout=0.005):
                break
            free += 1
            while free < capacity and self._slots.acquire(blocking=False):
                free += 1
        return free

    def _hand_back(self, claims: list[Claim]) -> None:
        for claim in claims:
            with contextlib.suppress(StorageUnavailable):
                self.queue.store.release(claim)
        self._give_back(len(claims))

    def _give_back(self, count: int) -> None:
        if count > 0:
            self._slots.release(count)

    def _forget(self, active: ActiveJob) -> None:
        """Drop `active` from inflight (under _handoff). A job due again at once (retried
        or postponed with no delay) may be claimed anew meanwhile: that newer entry is not
        ours to drop."""
        if self.inflight.get(active.claim.id) is active:
            del self.inflight[active.claim.id]

    def _work_loop(self) -> None:
        while True:
            active = self._inbox.get()
            if active is None:
                return
            if self.stopping.is_set():
                # Prefetched and not started when the consumer began to stop: back to the
                # queue now (stop_fetching hands back those still in the inbox).
                self._hand_back_unstarted(active)
                continue
            handed = False
            try:
                handed = self._execute(active)
            except Exception:
                log.exception("job %s: could not record its outcome", active.claim.id)
            finally:
                if not handed:  # else the recorder does both once the completion is written
                    with self._handoff:
                        self._forget(active)
                    self._slots.release()

    def _hand_back_unstarted(self, active: ActiveJob) -> None:
        with contextlib.suppress(StorageUnavailable):
            self.queue.store.release(active.claim)
        with self._handoff:
            self._forget(active)
        self._slots.release()

    def _execute(self, active: ActiveJob) -> bool:
        """Run the job's body and record its outcome; True when a success was handed to
        the completion recorder (which logs it and drops it from inflight once written)."""
        claim = active.claim
        active.started = time.monotonic()
        token = _current.set(active)
        tenant = "-"
        try:
            try:
                task = self.queue.huey.deserialize_task(claim.message)
            except Exception as exc:
                self._record_poison(claim, exc)
                return False
            tenant = str(task.kwargs.get("tenant_id", "-"))
            log.debug("job %s %s active (attempt %d)", claim.id, claim.name, claim.attempts)
            try:
                with self.limiter.limit(self.queue.spec.timeout_seconds):
                    result = task.execute()
            except Postpone as exc:
                outcome = self._record_postpone(claim, exc)
            except Exception as exc:
                outcome = self._record_failure(claim, exc)
            else:
                active.done = True
                self.recorder.submit(_Completion(active, result, tenant))
                return True
        finally:
            _current.reset(token)
        self._log_outcome(active, tenant, outcome, time.monotonic())
        return False

    def _log_outcome(self, active: ActiveJob, tenant: str, outcome: str, now: float) -> None:
        claim = active.claim
        log.info(
            "job %s queue=%s tenant=%s name=%s outcome=%s attempts=%d/%d duration=%.3fs",
            claim.id, self.queue.name, tenant, claim.name.rsplit(".", 1)[-1], outcome,
            claim.attempts, claim.max_attempts, now - active.started,
        )  # fmt: skip

    def _record_failure(self, claim: Claim, exc: Exception) -> str:
        delay = next_delay(exc, claim.attempts, claim.max_attempts, self.queue.spec)
        excerpt = "".join(traceback.format_exception(exc))[-2000:]
        error = error_record(type(exc).__name__, str(exc), excerpt)
        state = self._persist(lambda: self.queue.store.fail(claim, error, delay))
        if state == "delayed":
            return f"retry-in-{delay:.1f}s"
        return state or "lease-lost"

    def _record_postpone(self, claim: Claim, postpone: Postpone) -> str:
        # NaN, negative or absurd delays would leave the job unrunnable or spinning.
        delay = postpone.delay if math.isfinite(postpone.delay) else 0.0
        delay = min(max(delay, 0.0), MAX_DELAY)
        store = self.queue.store
        reason = storable_text(postpone.reason)
        owned = self._persist(lambda: store.postpone(claim, delay, reason))
        return f"postponed-{delay:.1f}s" if owned else "lease-lost"

    def _record_poison(self, claim: Claim, exc: Exception) -> None:
        raw = claim.message[:500].decode("utf-8", "backslashreplace")
        error = error_record("PoisonMessage", f"cannot run message: {exc}; raw: {raw}")
        self.queue.store.fail(claim, error, None)
        log.error("job %s queue=%s outcome=dead poison message: %s", claim.id, self.queue.name, exc)

    def _persist(self, record: Callable[[], T]) -> T:
        """Record a finished job's outcome, waiting out a storage outage: the job ran, so
        running it again after the outage (its lease expired) is the last resort."""
        backoff = 0.1
        deadline = time.monotonic() + max(self.queue.spec.lease_seconds, 30.0)
        while True:
            try:
                outcome = record()
            except StorageUnavailable as exc:
                if time.monotonic() > deadline:
                    raise
                self.outage.down(exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                self.outage.up()
                return outcome

    def stop_fetching(self) -> None:
        with self._handoff:  # once this returns, nothing new enters inflight
            self.stopping.set()
        # Prefetched jobs no worker has started go back to the queue now, not after the
        # grace: a worker that takes one from here on hands it back too (_work_loop).
        while True:
            try:
                active = self._inbox.get_nowait()
            except stdqueue.Empty:
                break
            if active is None:
                self._inbox.put(None)
                break
            self._hand_back_unstarted(active)
        if self._threads:  # end the fetcher's blocking wait now: gone when the grace ends
            with contextlib.suppress(StorageUnavailable):
                self.queue.store.wake()

    def release_unfinished(self) -> int:
        """Hand back the jobs still running (their bodies overran the grace). A job whose
        body succeeded is not handed back: the recorder writes its completion."""
        released = 0
        for active in list(self.inflight.values()):
            if active.done:
                continue
            try:
                if self.queue.store.release(active.claim):
                    released += 1
            except StorageUnavailable:
                pass  # the lease expires and the reaper returns the job
        return released

    def wind_down(self) -> None:
        """Let idle workers and the recorder exit (the recorder after writing what is
        queued), and wake the fetcher wherever it waits (a blocking wait for jobs, or a
        free worker slot)."""
        for _ in range(self.workers):
            self._inbox.put(None)
        self.recorder.stop()
        if self._threads:
            self._slots.release()
            with contextlib.suppress(StorageUnavailable):
                self.queue.store.wake()

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the fetcher and the recorder to end (after
        wind_down). Workers still inside an overrunning job are daemons: they die with
        the process."""
        deadline = time.monotonic() + timeout
        for thread in self._threads[:2]:
            thread.join(max(deadline - time.monotonic(), 0.0))


class Consumer:
    """Runs the given queues in this process until stop()."""

    # After the grace: how long stop() waits, in all, for the fetchers to end. They were
    # woken when the grace began and need a few ms; one stuck in a storage call is a
    # daemon and is left behind (a job it claims meanwhile comes back when its lease ends).
    JOIN_SECONDS = 0.25

    def __init__(
        self,
        broker: Broker,
        queue_names: Iterable[str],
        workers: dict[str, int] | None = None,
    ) -> None:
        self.broker = broker
        self.settings = broker.settings
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.outage = OutageLog()
        self.limiter = TimeLimiter()
        workers = workers or {}
        self.runners = [
            QueueRunner(
                broker.queue(name),
                self.id,
                workers.get(name, broker.queue(name).spec.workers),
                self.outage,
                self.limiter,
            )
            for name in queue_names
        ]
        self._stop = threading.Event()
        self._maintenance = threading.Thread(
            target=self._maintain, name="crmqueue-maintenance", daemon=True
        )
        self.is_leader = False
        self._periodic = PeriodicScheduler()  # Huey periodic tasks of this consumer's queues

    def start(self) -> None:
        for runner in self.runners:
            runner.start()
        self._heartbeat()
        self._maintenance.start()
        log.info(
            "consumer %s started: %s",
            self.id,
            ", ".join(f"{r.queue.name} x{r.workers}" for r in self.runners),
        )

    def stop(self, grace: float | None = None) -> None:
        """Stop taking jobs, let running ones finish within `grace` seconds, then hand
        the unfinished ones back to the queue. Returns within `grace` plus JOIN_SECONDS
        at most and a few storage round trips (three a queue, one an unfinished job)."""
        grace = self.settings.runner.shutdown_grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        for runner in self.runners:
            runner.stop_fetching()
        while time.monotonic() < deadline and any(r.inflight for r in self.runners):
            time.sleep(min(0.02, max(deadline - time.monotonic(), 0.0)))
        released = sum(r.release_unfinished() for r in self.runners)
        if released:
            log.warning("handed %d unfinished job(s) back to their queues", released)
        self._stop.set()
        for runner in self.runners:
            runner.wind_down()
        joined = time.monotonic() + self.JOIN_SECONDS
        for runner in self.runners:
            runner.join(max(joined - time.monotonic(), 0.0))
        for runner in self.runners:
            with contextlib.suppress(StorageUnavailable):
                runner.queue.store.forget_consumer(self.id)
        log.info("consumer %s stopped", self.id)

    def _heartbeat(self) -> None:
        ttl = self.settings.runner.heartbeat_seconds * 3
        for runner in self.runners:
            runner.queue.store.heartbeat(self.id, runner.workers, ttl)

    def _maintain(self) -> None:
        runner_settings = self.settings.runner
        due = {"heartbeat": 0.0, "reap": 0.0, "sweep": 0.0, "health": 0.0}
        lock_store = self.broker.queue("email").store
        while not self._stop.wait(0.25):
            now = time.monotonic()
            try:
                self._renew_leases(now)
                self._periodic.tick([runner.queue for runner in self.runners if runner.workers])
                if now >= due["heartbeat"]:
                    due["heartbeat"] = now + runner_settings.heartbeat_seconds
                    self._heartbeat()
                    self.is_leader = lock_store.acquire_lock(
                        LEADER_LOCK, self.id, runner_settings.heartbeat_seconds * 3
                    )
                    self.outage.up()  # only after a round trip that succeeded
                if not self.is_leader:
                    continue
                if now >= due["reap"]:
                    due["reap"] = now + 1.0
                    self.reap()
                if now >= due["sweep"]:
                    due["sweep"] = now + runner_settings.sweep_interval_seconds
                    self.sweep()
                if now >= due["health"]:
                    due["health"] = now + runner_settings.health_interval_seconds
                    self.check_health()
            except StorageUnavailable as exc:
                # Unconfirmed leadership is no leadership: another consumer may take the
                # lock once it expires, and periodic work needs the storage anyway.
                self.is_leader = False
                self.outage.down(exc)
            except Exception:
                log.exception("maintenance step failed")

    def _renew_leases(self, now: float) -> None:
        for runner in self.runners:
            every = runner.queue.spec.lease_seconds / 3
            for active in list(runner.inflight.values()):
                if now - active.touched >= every:
                    active.touched = now
                    runner.queue.store.touch(active.claim, runner.queue.spec.lease_seconds)

    def reap(self) -> None:
        for queue in self.broker.queues.values():
            stalled = queue.store.reap(queue.spec.max_stalls)
            if stalled:
                log.warning("queue %s: %d job(s) stalled (lease expired)", queue.name, len(stalled))

    def sweep(self) -> None:
        for queue in self.broker.queues.values():
            removed = queue.store.sweep(
                queue.spec.keep_completed_seconds, queue.spec.keep_failed_seconds
            )
            if removed:
                log.debug("queue %s: retention removed %d record(s)", queue.name, removed)

    def check_health(self) -> dict[str, Any]:
        from crmqueue.engine.health import HEALTH_KEY, health

        report = health(self.broker)
        for stats in report["queues"]:
            if not stats["healthy"]:
                log.warning(
                    "queue %s degraded: failure rate %.1f%%, %d waiting, %d worker(s)",
                    stats["queue"], stats["failure_rate"] * 100, stats["waiting"], stats["workers"],
                )  # fmt: skip
        self.broker.queue("email").store.put_data(HEALTH_KEY, json.dumps(report).encode())
        return report


def exit_process(code: int = 0) -> NoReturn:
    """End a consumer process once Consumer.stop() has returned: run the atexit handlers
    (logging's flush among them), flush the standard streams, then exit without the
    interpreter's teardown.

    A stopped consumer owes the storage nothing more (completions, hand-backs and its
    consumer record are written); the teardown would only free some 700 modules and
    their objects, 0.2 to 1 s on a busy host, after the shutdown grace. Threads are not
    waited for: workers still inside a job that was handed back end here, as daemons do.
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
