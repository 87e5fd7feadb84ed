"""Batches as the API sees them: submit one spec over many models, read the aggregate.

A batch and all its jobs are inserted in the request's one transaction, after every
job's references are checked and the tenant's concurrent-job quota is found to have a
slot for each job: all or nothing. Its jobs are then sent to the broker after the commit,
like single jobs, and run (and are cancelled, listed, downloaded) like any job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.batch_schemas import BatchDetail, BatchIn, BatchJob, BatchList, BatchOut
from api.errors import BatchTooLarge
from api.job_service import (
    check_references,
    check_registry,
    check_webhook_destination,
    method_label,
    spec_sha256,
)
from api.quotas import check_job_slot
from api.worker_check import check_all, record_waiting, requirements_for
from service.settings import Settings
from store import batches, jobs, webhooks
from store.tables import BatchRow, JobRow
from worker.enqueue import JobQueue


@dataclass(frozen=True)
class BatchSubmission:
    batch: BatchRow
    jobs: list[JobRow]
    # False when an Idempotency-Key replayed an earlier batch
    created: bool


def request_sha256(body: BatchIn) -> str:
    canonical = json.dumps(
        {"model_ids": body.model_ids, "spec": body.template(), "webhook_url": body.webhook_url},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_batch(
    session: Session,
    body: BatchIn,
    *,
    tenant_id: str,
    api_key_id: str,
    idempotency_key: str | None,
    queue: JobQueue,
    settings: Settings,
) -> BatchSubmission:
    """Insert the batch and one queued job per model (or find the replayed batch).

    Raises BatchTooLarge over `settings.max_batch_jobs`, UnknownReference or
    IncompatibleData for any job, QuotaExceeded when the tenant lacks a slot for every
    job, IdempotencyConflict for a key used with another body. The caller commits, then
    enqueues the jobs when `created`.
    """
    if len(body.model_ids) > settings.max_batch_jobs:
        raise BatchTooLarge(
            f"a batch may name at most {settings.max_batch_jobs} models, "
            f"this one names {len(body.model_ids)}"
        )
    digest = request_sha256(body)
    if idempotency_key is not None:
        replayed = batches.find_replay(session, tenant_id, idempotency_key, digest)
        if replayed is not None:
            return BatchSubmission(replayed, batches.batch_jobs(session, replayed.id), False)
    check_webhook_destination(body.webhook_url, settings)
    specs = body.job_specs()
    for spec in specs:
        check_registry(spec, settings)
        check_references(session, spec, tenant_id)
    check_job_slot(session, tenant_id, settings, specs=specs)
    waiting = {
        spec.device: check_all(
            session, requirements_for(spec, queue.queue_for(spec.device)), settings
        )
        for spec in specs
    }
    batch, created = batches.create_batch(
        session,
        tenant_id=tenant_id,
        spec=body.template(),
        webhook_url=body.webhook_url,
        idempotency_key=idempotency_key,
        request_sha256=digest,
    )
    if not created:  # a concurrent request with the same key won
        return BatchSubmission(batch, batches.batch_jobs(session, batch.id), False)
    created_jobs = []
    for spec in specs:
        job, _ = jobs.create_job(
            session,
            tenant_id=tenant_id,
            spec=spec.model_dump(mode="json"),
            queue=queue.queue_for(spec.device),
            request_sha256=spec_sha256(spec),
            idempotency_key=None,
            api_key_id=api_key_id,
            webhook_url=body.webhook_url,
            batch_id=batch.id,
            method=method_label(spec),
        )
        if body.webhook_url is not None:
            webhooks.watch_job(session, job.id, body.webhook_url)
        reason = waiting[spec.device]
        if reason is not None:
            record_waiting(session, job.id, reason, settings)
        created_jobs.append(job)
    return BatchSubmission(batch, created_jobs, True)


def batch_detail(batch: BatchRow, batch_jobs: list[JobRow]) -> BatchDetail:
    """The batch with its counts, progress and every job in short."""
    counts = batches.BatchCounts()
    for job in batch_jobs:
        counts.by_state[job.state] = counts.by_state.get(job.state, 0) + 1
        counts.progress_sum += job.progress
    out = BatchOut.from_row(batch, counts)
    return BatchDetail(**out.model_dump(), jobs=[BatchJob.from_row(job) for job in batch_jobs])


def read_batch(session: Session, batch_id: str, *, tenant_id: str) -> BatchDetail:
    batch = batches.get_batch(session, batch_id, tenant_id=tenant_id)
    return batch_detail(batch, batches.batch_jobs(session, batch.id))


def list_batches(
    session: Session, *, tenant_id: str, limit: int, cursor: str | None
) -> BatchList:
    rows, next_cursor = batches.list_batches(
        session, tenant_id=tenant_id, limit=limit, cursor=cursor
    )
    counts = batches.counts(session, [row.id for row in rows])
    return BatchList(
        items=[BatchOut.from_row(row, counts[row.id]) for row in rows], next_cursor=next_cursor
    )
