"""Retention, run periodically by the worker's parent: expired models, datasets and
artifacts lose their rows, then blobs that nothing names are deleted (from the local
folder or the object store)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings
from store.blobs import BlobStore
from store.db import transaction
from store.retention import collect_blobs, expire_rows
from store.tables import utcnow

log = logging.getLogger(__name__)

# An upload publishes its blob just before its row commits; younger files are spared.
BLOB_GRACE_S = 3600.0


@dataclass(frozen=True)
class CleanupReport:
    model_ids: list[str]
    dataset_ids: list[str]
    artifact_job_ids: list[str]
    removed_blobs: list[str]


def clean_once(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    *,
    blob_grace_s: float = BLOB_GRACE_S,
    now: datetime | None = None,
) -> CleanupReport:
    """One pass; `now` stands in for the clock (tests)."""
    now = now or utcnow()
    with transaction(sessions) as session:
        expired = expire_rows(
            session,
            now=now,
            dataset_retention=_days(settings.dataset_retention_days),
            artifact_retention=_days(settings.artifact_retention_days),
            model_retention=_days(settings.model_retention_days),
        )
    # After the commit: a blob is only unnamed once the rows naming it are gone for good.
    removed = collect_blobs(sessions, blobs, grace_s=blob_grace_s, now=now)
    if expired.model_ids or expired.dataset_ids or expired.artifact_job_ids or removed:
        log.info(
            "retention: %d models, %d datasets, artifacts of %d jobs, %d blobs removed",
            len(expired.model_ids),
            len(expired.dataset_ids),
            len(expired.artifact_job_ids),
            len(removed),
        )
    return CleanupReport(
        expired.model_ids, expired.dataset_ids, expired.artifact_job_ids, removed
    )


def _days(days: float | None) -> timedelta | None:
    return None if days is None else timedelta(days=days)
