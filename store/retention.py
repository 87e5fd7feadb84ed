"""Retention: models, datasets and job artifacts expire after a configured age; blobs
that no row names any more are then deleted, in the local folder or the object store.

A model or dataset that a queued or running job still names is kept until that job ends.
Expired artifacts leave their job's record and report in place (the metrics stay); the
job's events say when its files were removed. A blob is deleted only under its lock
(store.blob_refs) and when it is older than a grace period: an upload publishes its blob
just before its row commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from store import blob_refs
from store.blobs import BlobStore
from store.jobs import add_event
from store.tables import ArtifactRow, DatasetRow, JobRow, ModelRow
from store.usage import datasets_named_by_active_jobs, models_named_by_active_jobs


@dataclass
class Expired:
    model_ids: list[str] = field(default_factory=list)
    dataset_ids: list[str] = field(default_factory=list)
    artifact_job_ids: list[str] = field(default_factory=list)


def expire_rows(
    session: Session,
    *,
    now: datetime,
    dataset_retention: timedelta | None,
    artifact_retention: timedelta | None,
    model_retention: timedelta | None = None,
) -> Expired:
    """Delete the rows of expired models, datasets and artifacts (not their blobs: see
    `collect_blobs`). Returns what was removed."""
    expired = Expired()
    if model_retention is not None:
        in_use = models_named_by_active_jobs(session)
        old = session.scalars(
            select(ModelRow.id).where(ModelRow.created_at < now - model_retention)
        )
        expired.model_ids = [model_id for model_id in old if model_id not in in_use]
        if expired.model_ids:
            session.execute(delete(ModelRow).where(ModelRow.id.in_(expired.model_ids)))
    if dataset_retention is not None:
        in_use = datasets_named_by_active_jobs(session)
        old = session.scalars(
            select(DatasetRow.id).where(DatasetRow.created_at < now - dataset_retention)
        )
        expired.dataset_ids = [dataset_id for dataset_id in old if dataset_id not in in_use]
        if expired.dataset_ids:
            session.execute(delete(DatasetRow).where(DatasetRow.id.in_(expired.dataset_ids)))
    if artifact_retention is not None:
        finished_before = now - artifact_retention
        expired.artifact_job_ids = list(
            session.scalars(
                select(JobRow.id)
                .where(JobRow.finished_at < finished_before)
                .where(JobRow.id.in_(select(ArtifactRow.job_id)))
            )
        )
        for job_id in expired.artifact_job_ids:
            session.execute(delete(ArtifactRow).where(ArtifactRow.job_id == job_id))
            job = session.get(JobRow, job_id)
            attempt = job.attempt if job is not None else 0
            add_event(
                session, job_id, attempt, "artifacts_expired", "artifacts removed by retention"
            )
    session.flush()
    return expired


def collect_blobs(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    *,
    grace_s: float,
    now: datetime | None = None,
) -> list[str]:
    """Delete the blobs no row names that were last written more than `grace_s` before
    `now`; their sha256s. Each is checked again under its lock before it goes."""
    with sessions() as session:
        referenced = blob_refs.referenced_blobs(session)
    deadline = (now or datetime.now(UTC)) - timedelta(seconds=grace_s)
    candidates = [
        info.sha256
        for info in blobs.list()
        if info.sha256 not in referenced and info.modified_at < deadline
    ]
    # another cleaner may get there first: delete() then says False
    return blob_refs.release(sessions, blobs, candidates)
