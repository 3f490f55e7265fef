"""The one exception tree of crmqueue: every error it raises on purpose is a CrmQueueError."""

from __future__ import annotations

import datetime as _dt


class CrmQueueError(Exception):
    """Root of every error crmqueue raises on purpose."""


class ConfigError(CrmQueueError):
    """The configuration is invalid; the message names each bad key path."""


class PayloadError(CrmQueueError):
    """A job payload failed validation; nothing was enqueued."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__(
            "payload invalid: " + "; ".join(f"{field}: {reason}" for field, reason in errors)
        )


class StorageUnavailable(CrmQueueError):
    """The queue storage could not be reached within the configured time."""


class JobNotFound(CrmQueueError):
    """No job with that id exists (it may have expired)."""


class InvalidJobState(CrmQueueError):
    """The operation is not allowed in the job's current state."""


class PermanentError(CrmQueueError):
    """Raised by a job body: retrying cannot help; the job goes dead at once."""


class RetryableError(CrmQueueError):
    """Raised by a job body: try again, after `delay` seconds if given (e.g. Retry-After)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class TimeLimitExceeded(CrmQueueError):
    """Raised inside a job body that ran past its queue's timeout_seconds; it counts as a
    failed attempt (retried or dead per the queue's policy)."""


class Postpone(CrmQueueError):
    """Raised by a job body: not now, try again in `delay` seconds. Not a failed attempt:
    the job goes to `delayed` with its attempt given back, nothing counts as a failure in
    the stats, and `reason` is shown in the job's record (an entry of type ``Postponed``
    among its errors; consecutive postponements share one entry with a count). Used when
    the work cannot start yet (an endpoint's circuit breaker is open, a tenant's share is
    used up), as opposed to RetryableError for work that was tried and failed."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class QuotaExceeded(PayloadError):
    """A tenant's daily quota for a queue ([tenants] daily_quota) would be exceeded by
    this enqueue; nothing was enqueued (a bulk enqueue is all or nothing).

    `tenant`, `queue`, `limit` (jobs a day), `used` (jobs counted today before this
    call), `requested` (jobs this call would have added), `reset_at` (an aware datetime in
    the tenant's time zone: its next local midnight, when the count starts again) and
    `retry_after` (whole seconds until then, at least 1; the API's Retry-After)."""

    def __init__(
        self,
        tenant: str,
        queue: str,
        limit: int,
        used: int,
        requested: int,
        reset_at: _dt.datetime,
        retry_after: int,
    ) -> None:
        self.tenant = tenant
        self.queue = queue
        self.limit = limit
        self.used = used
        self.requested = requested
        self.reset_at = reset_at
        self.retry_after = retry_after
        message = (
            f"daily quota of {limit} {queue} jobs for tenant {tenant} exceeded ({used} used"
            f" today, {requested} more asked); resets at {reset_at.isoformat()}"
            f" (in {retry_after} s)"
        )
        self.errors = [("tenant_id", message)]
        CrmQueueError.__init__(self, f"quota exceeded: {message}")
