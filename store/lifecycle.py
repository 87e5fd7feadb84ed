"""Deleting what a tenant stored: a model, a dataset, or a finished job with its events
and artifacts. Only rows go here, in the caller's transaction; the blobs they named are
released after the commit (`store.blob_refs.release`), when no other row names them.

A model or dataset that a queued or running job of the tenant reads cannot be deleted
(InUse names the job). The tenant's submission lock is taken first, so a job submitted
at the same moment either is seen here or finds the input gone (the submission takes the
same lock before it checks its references).
"""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.orm import Session

from store import catalog, jobs, recipe_candidates, tenants, usage
from store.tables import (
    ArtifactRow,
    DatasetRow,
    JobEventRow,
    JobRow,
    ModelRow,
    WebhookDeliveryRow,
)


class InUse(Exception):
    """A queued or running job still reads the model or dataset."""

    def __init__(self, kind: str, item_id: str, job_id: str) -> None:
        super().__init__(
            f"{kind} {item_id!r} is an input of job {job_id!r}, which is queued or running: "
            f"cancel that job (POST /v1/jobs/{job_id}/cancel) or wait for it to end, "
            "then delete again"
        )
        self.kind = kind
        self.item_id = item_id
        self.job_id = job_id

    @property
    def extensions(self) -> dict[str, str]:
        """Added to the 409 problem: the job that holds the input."""
        return {"job_id": self.job_id}


class JobActive(Exception):
    """The job has not ended: it must be cancelled (and have ended) before deletion."""

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(
            f"job {job_id!r} is {state}: cancel it first (POST /v1/jobs/{job_id}/cancel), "
            "then delete it once it has ended"
        )
        self.job_id = job_id
        self.state = state

    @property
    def extensions(self) -> dict[str, str]:
        return {"state": self.state}


def delete_model(session: Session, model_id: str, *, tenant_id: str) -> str:
    """Delete the tenant's model row; returns the sha256 of its blob. NotFound, InUse."""
    row = catalog.get_model(session, model_id, tenant_id=tenant_id)
    tenants.lock_for_submission(session, row.tenant_id)
    job_id = usage.active_job_using_model(session, row.tenant_id, model_id)
    if job_id is not None:
        raise InUse("model", model_id, job_id)
    session.execute(delete(ModelRow).where(ModelRow.id == model_id))
    return row.sha256


def delete_dataset(session: Session, dataset_id: str, *, tenant_id: str) -> str:
    """Delete the tenant's dataset row; returns the sha256 of its blob. NotFound, InUse."""
    row = catalog.get_dataset(session, dataset_id, tenant_id=tenant_id)
    tenants.lock_for_submission(session, row.tenant_id)
    job_id = usage.active_job_using_dataset(session, row.tenant_id, dataset_id)
    if job_id is not None:
        raise InUse("dataset", dataset_id, job_id)
    session.execute(delete(DatasetRow).where(DatasetRow.id == dataset_id))
    return row.sha256


def delete_job(session: Session, job_id: str, *, tenant_id: str) -> list[str]:
    """Delete the tenant's finished job, its events, webhook delivery and artifact rows;
    returns the sha256s its artifacts named. JobNotFound, JobActive."""
    job = jobs.get_job(session, job_id, tenant_id=tenant_id)
    if job.state not in jobs.FINAL_STATES:
        raise JobActive(job_id, job.state)
    shas = [artifact.sha256 for artifact in jobs.list_artifacts(session, job_id)]
    shas += recipe_candidates.forget_job(session, job_id)
    for table in (ArtifactRow, JobEventRow, WebhookDeliveryRow):
        session.execute(delete(table).where(table.job_id == job_id))
    # Final states never change again, so the row read above is the row deleted here.
    session.execute(
        delete(JobRow).where(JobRow.id == job_id, JobRow.state.in_(jobs.FINAL_STATES))
    )
    session.expunge(job)
    return shas
