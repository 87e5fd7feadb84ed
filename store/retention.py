"""Retention: datasets and job artifacts expire after a configured age; blob files that no
row names any more are then deleted.

A dataset that a queued or running job still names is kept until that job ends. Expired
artifacts leave their job's record and report in place (the metrics stay); the job's
events say when its files were removed. A blob is deleted only when it is older than a
grace period, because an upload publishes its blob just before its row commits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from store.blobs import BlobStore
from store.jobs import add_event
from store.tables import ArtifactRow, DatasetRow, JobRow, ModelRow

ACTIVE_STATES = ("queued", "running")
DATASET_ROLES = ("eval_dataset_id", "calibration_dataset_id", "train_dataset_id")


@dataclass
class Expired:
    dataset_ids: list[str] = field(default_factory=list)
    artifact_job_ids: list[str] = field(default_factory=list)


def expire_rows(
    session: Session,
    *,
    now: datetime,
    dataset_retention: timedelta | None,
    artifact_retention: timedelta | None,
) -> Expired:
    """Delete the rows of expired datasets and artifacts (not their blobs: see
    `collect_blobs`). Returns what was removed."""
    expired = Expired()
    if dataset_retention is not None:
        in_use = _datasets_named_by_active_jobs(session)
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


def _datasets_named_by_active_jobs(session: Session) -> set[str]:
    specs = session.scalars(select(JobRow.spec).where(JobRow.state.in_(ACTIVE_STATES)))
    return {spec[role] for spec in specs for role in DATASET_ROLES if spec.get(role)}


def referenced_blobs(session: Session) -> set[str]:
    names: set[str] = set()
    for column in (ModelRow.sha256, DatasetRow.sha256, ArtifactRow.sha256):
        names.update(session.scalars(select(column).distinct()))
    return names


def collect_blobs(blobs: BlobStore, referenced: set[str], *, grace_s: float) -> list[str]:
    """Delete blob files no row names that are older than `grace_s`; their sha256s."""
    deadline = time.time() - grace_s
    removed = []
    for path in blobs.published():
        if path.name in referenced:
            continue
        try:
            if path.stat().st_mtime < deadline:
                path.unlink()
                removed.append(path.name)
        except FileNotFoundError:  # another cleaner got there first
            continue
    return removed
