"""Ids of webhook messages' delivery jobs, shared by the producers (crmqueue.tasks) and the
webhook queue's bodies (crmqueue.workers.webhook): a message with the CRM's own id makes
the same delivery job id for an endpoint however often it is published or delivered, so
enqueueing it again (enqueue_many(skip_existing=True)) adds nothing. Standard library only:
producers import it."""

from __future__ import annotations

import hashlib


def fanout_job_id(source: str, webhook_id: str) -> str:
    """The delivery job of one endpoint for one source (a publish job's id, or a message
    named by message_source): the same on a re-run, so nothing is enqueued twice."""
    digest = hashlib.blake2b(f"{source}\0{webhook_id}".encode(), digest_size=16)
    return digest.hexdigest()


def message_source(tenant_id: str, message_id: str) -> str:
    """What names the deliveries of a message with a caller's own id, in place of the
    publish job's id: a publish or a delivery retried by its caller (it may have been
    enqueued although the call failed) makes the same delivery jobs, which
    enqueue_many(skip_existing) drops. (':' is in no tenant id.)"""
    return f"message:{tenant_id}:{message_id}"


def delivery_job_id(tenant_id: str, webhook_id: str, message_id: str) -> str:
    """The delivery job of message `message_id` (the CRM's own id) to one endpoint: the
    one a publish_event with that message id makes for it, too."""
    return fanout_job_id(message_source(tenant_id, message_id), webhook_id)
