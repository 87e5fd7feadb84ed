"""Retention, run periodically by the worker's parent (first when the worker starts):
expired models, datasets and artifacts lose their rows, then blobs that nothing names
are deleted (from the local folder or the object store); and the work directories that
no running attempt owns (those of attempts killed with their worker, of ended jobs) are
removed."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings
from store.blobs import BlobStore
from store.db import transaction
from store.retention import collect_blobs, expire_rows
from store.tables import JobRow, utcnow

log = logging.getLogger(__name__)

# An upload publishes its blob just before its row commits; younger files are spared.
BLOB_GRACE_S = 3600.0


@dataclass(frozen=True)
class CleanupReport:
    model_ids: list[str]
    dataset_ids: list[str]
    artifact_job_ids: list[str]
    removed_blobs: list[str]
    removed_work_dirs: list[Path] = field(default_factory=list)


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
        expired.model_ids,
        expired.dataset_ids,
        expired.artifact_job_ids,
        removed,
        sweep_work_dirs(sessions, settings.work_dir),
    )


def sweep_work_dirs(sessions: sessionmaker[Session], work_root: Path) -> list[Path]:
    """Remove what no running attempt uses under `work_root` (`<job id>/attempt-N` and
    `<job id>/helper-*`): a job's whole folder once it ended or is gone; for a queued job,
    its attempts' folders (none runs); for a running one, the folders of its other
    attempts. Returns what was removed.

    The folders are listed before the jobs are read, so a folder made by an attempt
    that claims its job meanwhile is never among them: the claim commits before the
    attempt makes its folder."""
    listed = {
        job_dir.name: sorted(job_dir.iterdir())
        for job_dir in sorted(work_root.glob("job_*"))
        if job_dir.is_dir()
    }
    if not listed:
        return []
    with transaction(sessions) as session:
        rows = session.execute(
            select(JobRow.id, JobRow.state, JobRow.attempt).where(JobRow.id.in_(list(listed)))
        ).all()
    jobs = {str(job_id): (str(state), int(attempt)) for job_id, state, attempt in rows}
    removed: list[Path] = []
    for job_id, entries in listed.items():
        state, attempt = jobs.get(job_id, ("gone", 0))
        if state in ("queued", "running"):
            keep = {f"attempt-{attempt}"} if state == "running" else set()
            for entry in entries:
                # a running job's helpers may be at work: they remove their own folders
                if entry.name in keep or (state == "running" and entry.name.startswith("helper-")):
                    continue
                _remove(entry, removed)
        else:
            _remove(work_root / job_id, removed)
    if removed:
        log.info("work dirs: %d stale folders removed", len(removed))
    return removed


def _remove(path: Path, removed: list[Path]) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    removed.append(path)


def _days(days: float | None) -> timedelta | None:
    return None if days is None else timedelta(days=days)
