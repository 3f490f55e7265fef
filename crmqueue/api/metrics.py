"""``GET /metrics`` in the Prometheus text format, read from the queue storage and the
CRM store at scrape time: right across every consumer process and host, whichever
process serves the scrape (no per-process registry to merge).

Names follow Prometheus' conventions (base units, ``_total`` counters, ``crmqueue_``):

- ``crmqueue_jobs{queue,state}`` gauge: jobs per state now.
- ``crmqueue_queue_workers{queue}``, ``crmqueue_queue_consumers{queue}``,
  ``crmqueue_queue_paused{queue}`` gauges.
- ``crmqueue_jobs_{completed,failed,retried,dead,stalled}_total{queue}`` counters: the
  storage's own counters (JobStore.totals), kept by every consumer in the step that moves
  the job. failed counts failed attempts (retried or not).
- ``crmqueue_job_run_seconds{queue}`` and ``crmqueue_job_wait_seconds{queue}`` histograms
  (start to finish; enqueue to the last attempt's start) of the completed jobs still kept
  (at most RECENT_JOBS a queue, newest first): a window, not a running total, since
  retention deletes finished jobs.
- ``crmqueue_webhook_deliveries_total{status_class}`` (2xx, 3xx, 4xx, 5xx, error for no
  answer) over the delivery log kept (``[webhooks] keep_days``).
- ``crmqueue_storage_up`` 1, or 0 when the queue storage cannot be read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from crmqueue.engine.pause import is_paused
from crmqueue.engine.queues import Broker
from crmqueue.engine.storage import STATES, TOTALS
from crmqueue.errors import StorageUnavailable

log = logging.getLogger(__name__)

RECENT_JOBS = 1000
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


def _histogram(values: Iterable[float], bounds: tuple[float, ...]) -> tuple[list[Any], float]:
    data = sorted(max(v, 0.0) for v in values)
    buckets: list[Any] = []
    index = 0
    for bound in bounds:
        while index < len(data) and data[index] <= bound:
            index += 1
        buckets.append((str(float(bound)), index))
    buckets.append(("+Inf", len(data)))
    return buckets, sum(data)


class StorageCollector(Collector):
    """Reads the broker's storage (and the CRM store's delivery log) on every scrape."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("crmqueue_storage_up", "1 when the queue storage answers.")
        try:
            yield from self._queues()
            up.add_metric([], 1)
        except StorageUnavailable as exc:
            log.warning("metrics: %s", exc)
            up.add_metric([], 0)
        yield up
        yield from self._deliveries()

    def _queues(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "crmqueue_jobs", "Jobs per queue and state.", labels=["queue", "state"]
        )
        workers = GaugeMetricFamily(
            "crmqueue_queue_workers", "Worker threads of live consumers.", labels=["queue"]
        )
        consumers = GaugeMetricFamily(
            "crmqueue_queue_consumers", "Live consumer processes.", labels=["queue"]
        )
        paused = GaugeMetricFamily("crmqueue_queue_paused", "1 when paused.", labels=["queue"])
        help_text = {
            "completed": "Jobs completed.",
            "failed": "Failed attempts (retried or dead, stalls included).",
            "retried": "Failed attempts scheduled to be tried again.",
            "dead": "Jobs that went dead (attempts used up, permanent error, stalls).",
            "stalled": "Expired leases (a consumer died or hung).",
        }
        totals = {
            name: CounterMetricFamily(f"crmqueue_jobs_{name}", help_text[name], labels=["queue"])
            for name in TOTALS
        }
        run = HistogramMetricFamily(
            "crmqueue_job_run_seconds",
            f"Run time of the last {RECENT_JOBS} completed jobs kept (start to finish).",
            labels=["queue"],
        )
        wait = HistogramMetricFamily(
            "crmqueue_job_wait_seconds",
            f"Wait of the last {RECENT_JOBS} completed jobs kept (enqueue to last start).",
            labels=["queue"],
        )
        for name, queue in self.broker.queues.items():
            store = queue.store
            for state, n in store.counts().items():
                if state in STATES:
                    jobs.add_metric([name, state], n)
            live = store.live_consumers()
            workers.add_metric([name], sum(live.values()))
            consumers.add_metric([name], len(live))
            paused.add_metric([name], 1 if is_paused(store) else 0)
            for key, n in store.totals().items():
                totals[key].add_metric([name], n)
            recent = store.list_jobs("completed", RECENT_JOBS)
            runs = [
                r["finished_at"] - r["started_at"]
                for r in recent
                if r["finished_at"] and r["started_at"]
            ]
            waits = [r["started_at"] - r["created_at"] for r in recent if r["started_at"]]
            buckets, total = _histogram(runs, RUN_BUCKETS)
            run.add_metric([name], buckets, total)
            buckets, total = _histogram(waits, WAIT_BUCKETS)
            wait.add_metric([name], buckets, total)
        yield from (jobs, workers, consumers, paused, *totals.values(), run, wait)

    def _deliveries(self) -> Iterator[Metric]:
        import sqlalchemy as sa

        from crmqueue.crm import schema
        from crmqueue.crm.store import get_engine

        family = CounterMetricFamily(
            "crmqueue_webhook_deliveries",
            "Webhook delivery attempts in the kept log, by answer status class.",
            labels=["status_class"],
        )
        code = schema.webhook_deliveries.c.status_code
        counts = {name: 0 for name in ("2xx", "3xx", "4xx", "5xx", "error")}
        try:
            engine = get_engine(self.broker.settings.database.url)
            with engine.connect() as conn:
                rows = conn.execute(sa.select(code, sa.func.count()).group_by(code)).all()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("metrics: webhook delivery log: %s", exc)
            return
        for status, n in rows:
            key = "error" if status is None else f"{int(status) // 100}xx"
            counts[key] = counts.get(key, 0) + int(n)
        for key, n in counts.items():
            family.add_metric([key], n)
        yield family


def registry_for(broker: Broker) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StorageCollector(broker))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
