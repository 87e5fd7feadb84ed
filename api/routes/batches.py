"""Batches: one job spec submitted over many models, and their aggregate progress."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Path, Query, Response

from api import batch_service, job_service
from api.auth import CallerDep
from api.batch_schemas import BatchDetail, BatchIn, BatchList, batch_url
from api.deps import QueueDep, SessionDep, SessionFactoryDep, SettingsDep
from api.routes.docs import problems

router = APIRouter(prefix="/v1/batches", tags=["batches"], responses=problems(401))

BatchId = Annotated[str, Path(min_length=1, max_length=64)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Resending the same body with the same key returns the same batch.",
    ),
]


@router.post("", status_code=202, responses=problems(409, 422, 429))
def create_batch(
    body: BatchIn,
    response: Response,
    background: BackgroundTasks,
    caller: CallerDep,
    session: SessionDep,
    sessions: SessionFactoryDep,
    queue: QueueDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> BatchDetail:
    """Queue one job per model, all or none. The batch needs a free slot of the tenant's
    concurrent-job quota for every job (else 429 and nothing is created). A replay (same
    Idempotency-Key, same body) answers the earlier batch with `Idempotent-Replayed`."""
    submission = batch_service.submit_batch(
        session,
        body,
        tenant_id=caller.tenant_id,
        api_key_id=caller.key_id,
        idempotency_key=idempotency_key,
        queue=queue,
        settings=settings,
    )
    if submission.created:
        for job in submission.jobs:  # after the commit, like single jobs
            background.add_task(job_service.enqueue, sessions, queue, job.id, job.queue)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = batch_url(submission.batch.id)
    return batch_service.batch_detail(submission.batch, submission.jobs)


@router.get("", responses=problems(400))
def list_batches(
    caller: CallerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> BatchList:
    """Newest first, with each batch's counts; follow `next_cursor` for the next page."""
    return batch_service.list_batches(
        session, tenant_id=caller.tenant_id, limit=limit, cursor=cursor
    )


@router.get("/{batch_id}", responses=problems(404))
def get_batch(batch_id: BatchId, caller: CallerDep, session: SessionDep) -> BatchDetail:
    """Jobs per state, mean progress, and every job in short."""
    return batch_service.read_batch(session, batch_id, tenant_id=caller.tenant_id)
