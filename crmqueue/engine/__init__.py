"""Generic job machinery on top of Huey; it knows nothing about CRMs."""

from crmqueue.engine.huey_api import huey
from crmqueue.engine.queues import Broker, Queue, configure, get_broker, job
from crmqueue.engine.runner import (
    Consumer,
    complete_after,
    current_attempt,
    current_job_id,
    current_job_priority,
    job_ran_before,
    record_with_completion,
    report_progress,
)

__all__ = [
    "Broker",
    "Consumer",
    "Queue",
    "complete_after",
    "configure",
    "current_attempt",
    "current_job_id",
    "current_job_priority",
    "get_broker",
    "huey",
    "job",
    "job_ran_before",
    "record_with_completion",
    "report_progress",
]
