"""Generic job machinery on top of Huey; it knows nothing about CRMs."""

from crmqueue.engine.queues import Broker, Queue, configure, get_broker, job
from crmqueue.engine.runner import Consumer, current_job_id, report_progress

__all__ = [
    "Broker",
    "Consumer",
    "Queue",
    "configure",
    "current_job_id",
    "get_broker",
    "job",
    "report_progress",
]
