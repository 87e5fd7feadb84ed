"""Retention, run periodically by the worker's parent: expired datasets and artifacts
lose their rows, then blob files that nothing names are deleted."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from squeeze.settings import Settings
from store.blobs import BlobStore
from store.db import transaction
from store.retention import collect_blobs, expire_rows, referenced_blobs
from store.tables import utcnow

log = logging.getLogger(__name__)

# An upload publishes its blob just before its row commits; younger files are spared.
BLOB_GRACE_S = 3600.0


@dataclass(frozen=True)
class CleanupReport:
    dataset_ids: list[str]
    artifact_job_ids: list[str]
    removed_blobs: list[str]


def clean_once(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    *,
    blob_grace_s: float = BLOB_GRACE_S,
) -> CleanupReport:
    with transaction(sessions) as session:
        expired = expire_rows(
            session,
            now=utcnow(),
            dataset_retention=_days(settings.dataset_retention_days),
            artifact_retention=_days(settings.artifact_retention_days),
        )
    # After the commit: a blob is only unnamed once the rows naming it are gone for good.
    with transaction(sessions) as session:
        referenced = referenced_blobs(session)
    removed = collect_blobs(blobs, referenced, grace_s=blob_grace_s)
    if expired.dataset_ids or expired.artifact_job_ids or removed:
        log.info(
            "retention: %d datasets, artifacts of %d jobs, %d blob files removed",
            len(expired.dataset_ids),
            len(expired.artifact_job_ids),
            len(removed),
        )
    return CleanupReport(expired.dataset_ids, expired.artifact_job_ids, removed)


def _days(days: float | None) -> timedelta | None:
    return None if days is None else timedelta(days=days)
