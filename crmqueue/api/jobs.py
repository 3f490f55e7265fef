"""``/api/v1/admin/jobs``, ``/api/v1/admin/queues`` and ``/api/v1/jobs``: stats, health,
jobs, retry, remove, dead replay, pause and resume, enqueue. A face over crmqueue.jobs,
crmqueue.engine.health, crmqueue.engine.pause and crmqueue.tasks (the CLI's calls)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Query
from fastapi.responses import JSONResponse

from crmqueue import jobs as jobs_api
from crmqueue.api.auth import Role
from crmqueue.api.deps import (
    ApiState,
    Caller,
    State,
    not_found,
    require_admin,
    require_tenant_role,
    tenant_for,
)
from crmqueue.api.views import (
    EmailSent,
    EmailTest,
    Enqueued,
    HealthReport,
    JobPage,
    JobView,
    PauseState,
    QueueName,
    QueueStats,
    Replayed,
    StateName,
    TenantQueueStats,
)
from crmqueue.engine import health as health_mod
from crmqueue.engine import pause as pause_mod
from crmqueue.errors import InvalidJobState, JobNotFound, PayloadError

router = APIRouter(tags=["jobs"])

JobId = Annotated[str, Path(alias="jobId", min_length=1, max_length=200)]
MAX_SCAN = 20_000  # records looked through for one page of a filtered list
SCAN_STEP = 1_000


@router.get(
    "/api/v1/admin/jobs/stats",
    response_model=list[QueueStats] | list[TenantQueueStats],
    response_model_exclude_none=True,
)
def get_stats(
    role: Caller,
    app: State,
    tenant: Annotated[str | None, Query(max_length=64)] = None,
    top_tenants: bool = False,
) -> list[dict[str, Any]]:
    """Counts, throughput, failure rate and paused flag of every queue (admin); with
    `top_tenants=true` also the tenants with most waiting jobs per queue (admin). With
    `tenant`, that tenant's jobs per state and quota use per queue: an admin names any
    tenant, a tenant token only its own (another: 404, as if it did not exist)."""
    if tenant is not None and not top_tenants:
        who = tenant_for(role, tenant)
        return [jobs_api.stats(name, tenant=who) for name in app.broker.queues]
    require_admin(role)
    rows = [health_mod.stats(app.broker, name) for name in app.broker.queues]
    if top_tenants:
        for row in rows:
            row["top_tenants"] = jobs_api.top_tenants(row["queue"])
    return rows


@router.get(
    "/api/v1/admin/jobs/health",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "degraded or error"}},
)
def get_health(role: Caller, app: State) -> JSONResponse:
    """200 when healthy, else 503; the JSON of `crmqueue health --json` (admin)."""
    require_admin(role)
    report = health_mod.health(app.broker)
    last = None
    if report["status"] != "error" or report["queues"]:
        last = health_mod.last_check(app.broker)
    report["last_check"] = last["timestamp"] if last else None
    body = HealthReport.model_validate(report).model_dump(mode="json")
    return JSONResponse(body, status_code=200 if report["status"] == "healthy" else 503)


@router.post("/api/v1/admin/jobs/email-test", response_model=EmailSent)
def email_test(body: EmailTest, role: Caller, app: State) -> EmailSent:
    """Send a test message through the configured provider (as `crmqueue email test`)."""
    import uuid

    from crmqueue.payloads import EmailPayload, validate_payload
    from crmqueue.providers.email import get_provider
    from crmqueue.workers.email import build_email

    require_admin(role)
    payload = validate_payload(
        EmailPayload,
        {
            "tenant_id": "crmqueue-test",
            "to": body.to,
            "subject": "crmqueue test email",
            "template": "welcome",
            "context": {"first_name": "there"},
        },
    )
    email = build_email(payload, app.settings, f"crmqueue-test-{uuid.uuid4().hex}")
    result = get_provider(app.settings.email).send(email)
    return EmailSent(provider=result.provider, message_id=result.message_id)


def _visible(role: Role, queue: str, job_id: str) -> jobs_api.JobInfo:
    """The job, if it is in `queue` and the caller may see it; else 404 (never 403)."""
    require_tenant_role(role)
    try:
        info = jobs_api.get(job_id)
    except JobNotFound:
        raise not_found(f"job {job_id}") from None
    if info.queue != queue or not role.sees_tenant(info.tenant):
        raise not_found(f"job {job_id}")
    return info


@router.get("/api/v1/admin/jobs/{queue}", response_model=JobPage)
def list_jobs(
    queue: QueueName,
    role: Caller,
    app: State,
    state: StateName = "waiting",
    tenant: Annotated[str | None, Query(max_length=64)] = None,
    id: Annotated[str | None, Query(max_length=200, description="A job id or its start.")] = None,
    cursor: Annotated[str | None, Query(max_length=12)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    """A queue's jobs in `state`, a page at a time (waiting: next to run first; finished:
    newest first), filtered by tenant and by id or its start. A tenant token sees only its
    tenant's jobs. The cursor is a position in the list: jobs that change state between
    pages can shift it."""
    require_tenant_role(role)
    if not role.admin:
        if tenant is not None and tenant != role.tenant:
            return JobPage(items=[], next_cursor=None)
        tenant = role.tenant
    if id:  # an exact id first: a job found in any position
        try:
            info = _visible(role, queue, id)
        except HTTPException:
            info = None
        if info is not None and info.state == state and (tenant is None or info.tenant == tenant):
            return JobPage(items=[JobView.of(info)], next_cursor=None)
    start = 0
    if cursor:
        if not (cursor.isascii() and cursor.isdigit()):
            raise PayloadError([("cursor", f"{cursor!r} is not a cursor from an earlier page")])
        start = int(cursor)
    store = app.broker.queue(queue).store
    found: list[JobView] = []
    position = start
    fetched = 0
    # Unfiltered, one page is the next limit + 1 records; filtered, the scan goes on in steps.
    step = SCAN_STEP if tenant is not None or id else limit + 1
    while len(found) <= limit and position < MAX_SCAN:
        want = min(position + step, MAX_SCAN)
        records = store.list_jobs(state, want)
        fetched = len(records)
        for record in records[position:]:
            position += 1
            if (tenant is None or record["tenant"] == tenant) and (
                not id or record["id"].startswith(id)
            ):
                found.append(JobView.of(jobs_api.JobInfo.from_record(record)))
                if len(found) > limit:
                    position -= 1
                    break
        if fetched < want:
            break
    more = len(found) > limit or (fetched >= MAX_SCAN and position < fetched)
    return JobPage(items=found[:limit], next_cursor=str(position) if more else None)


@router.get("/api/v1/admin/jobs/{queue}/{jobId}", response_model=JobView)
def get_job(queue: QueueName, job_id: JobId, role: Caller) -> JobView:
    """One job: state, progress, attempts with errors, payload (secrets masked)."""
    return JobView.of(_visible(role, queue, job_id))


@router.post(
    "/api/v1/admin/jobs/{queue}/{jobId}/retry",
    response_model=JobView,
    responses={409: {"model": dict, "description": "the job is not dead"}},
)
def retry_job(queue: QueueName, job_id: JobId, role: Caller) -> JobView:
    """Put a dead job back to waiting with a fresh attempt budget; 409 if it is not dead."""
    _visible(role, queue, job_id)
    return JobView.of(jobs_api.retry(job_id))


@router.delete(
    "/api/v1/admin/jobs/{queue}/{jobId}",
    response_model=JobView,
    responses={409: {"model": dict, "description": "the job is active or finished"}},
)
def remove_job(queue: QueueName, job_id: JobId, role: Caller) -> JobView:
    """Delete a waiting, scheduled, delayed or dead job; 409 for an active or completed one."""
    _visible(role, queue, job_id)
    return JobView.of(jobs_api.remove(job_id))


@router.post("/api/v1/admin/jobs/{queue}/dead/replay", response_model=Replayed)
def replay_dead(queue: QueueName, role: Caller, app: State) -> Replayed:
    """Retry every dead job of the queue once (a tenant token: its tenant's only)."""
    require_tenant_role(role)
    if role.admin:
        return Replayed(queue=queue, replayed=jobs_api.replay_dead(queue))
    return Replayed(queue=queue, replayed=_replay_tenant(app, queue, role.tenant or ""))


def _replay_tenant(app: ApiState, queue: str, tenant: str) -> list[str]:
    q = app.broker.queue(queue)
    replayed = []
    for record in q.store.list_jobs("dead", MAX_SCAN):
        if record["tenant"] != tenant:
            continue
        try:
            q.store.retry_job(record["id"], q.spec.attempts)
        except (InvalidJobState, JobNotFound):
            continue
        replayed.append(record["id"])
    return replayed


@router.post("/api/v1/admin/queues/{queue}/pause", response_model=PauseState)
def pause_queue(queue: QueueName, role: Caller, app: State) -> PauseState:
    """Consumers stop claiming from the queue within a second (admin)."""
    require_admin(role)
    pause_mod.pause(app.broker.queue(queue).store)
    return PauseState(queue=queue, paused=True)


@router.post("/api/v1/admin/queues/{queue}/resume", response_model=PauseState)
def resume_queue(queue: QueueName, role: Caller, app: State) -> PauseState:
    """Consumers claim from the queue again within a second (admin)."""
    require_admin(role)
    pause_mod.resume(app.broker.queue(queue).store)
    return PauseState(queue=queue, paused=False)


@router.post("/api/v1/jobs/{queue}", response_model=Enqueued, status_code=201)
def enqueue(
    queue: QueueName,
    role: Caller,
    payload: Annotated[dict[str, Any], Body(description="The job's payload (JSON object).")],
    kind: Annotated[str | None, Query(max_length=200)] = None,
    priority: Annotated[int | None, Query(ge=-1000, le=1000)] = None,
    delay: Annotated[float | None, Query(ge=0, lt=10 * 366 * 86400.0)] = None,
) -> Enqueued:
    """Validate and enqueue one job, as crmqueue.tasks.enqueue (422 lists every bad
    field). A tenant token enqueues for its own tenant only (403 otherwise)."""
    from crmqueue import tasks

    require_tenant_role(role)
    given = payload.get("tenant_id", payload.get("tenantId"))
    if not role.admin and given is not None and given != role.tenant:
        raise HTTPException(403, f"this token enqueues for tenant {role.tenant} only")
    job = tasks.enqueue(queue, payload, kind=kind, priority=priority, delay=delay)
    return Enqueued(id=job.id, queue=job.queue)
