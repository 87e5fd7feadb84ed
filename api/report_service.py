"""Job reports as the API serves them: the job's record loaded for its tenant, then built
and rendered by `core.report`.

A job without a result (queued, running, failed, cancelled) is reported from what its
latest attempt measured so far, which its progress events hold.
"""

from __future__ import annotations

from contextlib import suppress

from sqlalchemy.orm import Session

from core.report import JobRecord, ProgressEvent
from store import catalog, jobs
from store.catalog import NotFound


def load_record(session: Session, job_id: str, *, tenant_id: str) -> JobRecord:
    """The job's record; JobNotFound for an unknown job or another tenant's."""
    job = jobs.get_job(session, job_id, tenant_id=tenant_id)
    record = JobRecord.model_validate(
        {
            "id": job.id,
            "state": job.state,
            "progress": job.progress,
            "current_step": job.current_step,
            "attempt": job.attempt,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "spec": job.spec,
            "result": job.result,
            "error_code": job.error_code,
            "error_message": job.error_message,
        }
    )
    # a model deleted since: the report still names its id; no id yet: an MLflow model
    # the worker has not fetched
    with suppress(NotFound):
        if record.spec.model_id is not None:
            record.model_filename = catalog.get_model(
                session, record.spec.model_id, tenant_id=job.tenant_id
            ).filename
    if job.result is None and job.attempt > 0:
        record.events = [
            ProgressEvent(message=event.message, data=event.data)
            for event in jobs.list_attempt_events(session, job.id, job.attempt, kind="progress")
        ]
    return record
