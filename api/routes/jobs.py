"""Compression jobs: submit, read, list, cancel, follow, download results."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Path, Query, Response

from api import catalog_service, job_service
from api.auth import CallerDep
from api.deps import BlobsDep, QueueDep, SessionDep, SessionFactoryDep, SettingsDep
from api.downloads import blob_response
from api.routes.docs import problems
from api.schemas import (
    ArtifactList,
    ArtifactOut,
    EventList,
    EventOut,
    JobList,
    JobOut,
    JobRequest,
    JobState,
    StepMethod,
    job_url,
)
from core.results import Outcome
from store import jobs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problems(401))

JobId = Annotated[str, Path(min_length=1, max_length=64)]
ArtifactName = Annotated[str, Path(min_length=1, max_length=200)]
MAX_EVENT_ID = 2**31 - 1
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Resending the same body with the same key returns the same job.",
    ),
]


@router.post("", status_code=202, responses=problems(409, 422, 429))
def create_job(
    spec: JobRequest,
    response: Response,
    background: BackgroundTasks,
    caller: CallerDep,
    session: SessionDep,
    sessions: SessionFactoryDep,
    queue: QueueDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Queue a job. A replay (same Idempotency-Key, same spec) answers the earlier job
    with `Idempotent-Replayed: true`; the same key with another spec is a 409. A tenant
    at its quota of queued and running jobs gets a 429 with `Retry-After`. With a
    `webhook_url`, the job's record is POSTed there, signed, once the job ends."""
    submission = job_service.submit_job(
        session,
        spec.job_spec(),
        tenant_id=caller.tenant_id,
        idempotency_key=idempotency_key,
        queue=queue,
        settings=settings,
        api_key_id=caller.key_id,
        webhook_url=spec.webhook_url,
    )
    job = submission.job
    if submission.created:
        # Background tasks run after the response, hence after the request's commit.
        background.add_task(job_service.enqueue, sessions, queue, job.id, job.queue)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = job_url(job.id)
    return JobOut.from_row(job)


@router.get("", responses=problems(400))
def list_jobs(
    caller: CallerDep,
    session: SessionDep,
    state: JobState | None = None,
    outcome: Outcome | None = None,
    method: StepMethod | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> JobList:
    """Newest first; follow `next_cursor` for the next page. `outcome` keeps the final
    jobs that came to it (improved, unchanged, targets_missed, failed, cancelled);
    `method` the jobs with a step of that method (quantize, prune, distill, search,
    auto)."""
    rows, next_cursor = job_service.list_jobs(
        session,
        tenant_id=caller.tenant_id,
        state=state,
        outcome=outcome,
        method=method,
        limit=limit,
        cursor=cursor,
    )
    return JobList(items=[JobOut.from_row(row) for row in rows], next_cursor=next_cursor)


@router.get("/{job_id}", responses=problems(404))
def get_job(job_id: JobId, caller: CallerDep, session: SessionDep) -> JobOut:
    return JobOut.from_row(jobs.get_job(session, job_id, tenant_id=caller.tenant_id))


@router.delete("/{job_id}", status_code=204, responses=problems(404, 409))
def delete_job(
    job_id: JobId, caller: CallerDep, sessions: SessionFactoryDep, blobs: BlobsDep
) -> Response:
    """Delete a finished job with its events and artifacts (files another job shares are
    kept). A queued or running job is a 409 `job_active`: cancel it first."""
    catalog_service.delete_job(sessions, blobs, job_id, tenant_id=caller.tenant_id)
    return Response(status_code=204)


@router.post("/{job_id}/cancel", status_code=202, responses=problems(404, 409))
def cancel_job(job_id: JobId, caller: CallerDep, session: SessionDep) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next check."""
    return JobOut.from_row(jobs.request_cancel(session, job_id, tenant_id=caller.tenant_id))


@router.get("/{job_id}/events", responses=problems(404))
def list_events(
    job_id: JobId,
    caller: CallerDep,
    session: SessionDep,
    # Bounded by the id column (a 32-bit INTEGER): past it, binding failed with a 500.
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventList:
    """The job's log, oldest first; poll with `after=next_after` for new events."""
    rows = job_service.list_events(
        session, job_id, tenant_id=caller.tenant_id, after=after, limit=limit
    )
    return EventList(
        items=[EventOut.from_row(row) for row in rows],
        next_after=rows[-1].id if rows else after,
    )


@router.get("/{job_id}/artifacts", responses=problems(404))
def list_artifacts(job_id: JobId, caller: CallerDep, session: SessionDep) -> ArtifactList:
    rows = job_service.list_artifacts(session, job_id, tenant_id=caller.tenant_id)
    return ArtifactList(items=[ArtifactOut.from_row(row) for row in rows])


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        307: {"description": "a presigned URL of the object store (when enabled)"},
        **problems(404),
    },
)
def download_artifact(
    job_id: JobId,
    name: ArtifactName,
    caller: CallerDep,
    session: SessionDep,
    blobs: BlobsDep,
    settings: SettingsDep,
) -> Response:
    """The file (`ETag` is its sha256), streamed from the blob store; with
    `SQUEEZE_BLOB_DOWNLOAD_REDIRECT` and the object store, a 307 to a presigned URL."""
    artifact = job_service.artifact_row(session, job_id, name, tenant_id=caller.tenant_id)
    return blob_response(
        blobs,
        settings,
        sha256=artifact.sha256,
        size_bytes=artifact.size_bytes,
        filename=artifact.name,
        media_type=artifact.media_type,
    )
