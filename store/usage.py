"""Which models and datasets queued or running jobs still read (their specs name them)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.tables import JobRow

ACTIVE_STATES = ("queued", "running")
DATASET_ROLES = ("eval_dataset_id", "calibration_dataset_id", "train_dataset_id")


def spec_model_ids(spec: dict[str, Any]) -> list[str]:
    """The job's own model, then the uploaded students of its distill steps."""
    ids = [spec.get("model_id")]
    for step in spec.get("steps") or []:
        student = step.get("student") if isinstance(step, dict) else None
        if isinstance(student, dict) and student.get("source") == "upload":
            ids.append(student.get("model_id"))
    return [model_id for model_id in dict.fromkeys(ids) if isinstance(model_id, str)]


def spec_dataset_ids(spec: dict[str, Any]) -> list[str]:
    return [spec[role] for role in DATASET_ROLES if isinstance(spec.get(role), str)]


def _active_specs(session: Session, tenant_id: str | None) -> list[tuple[str, dict[str, Any]]]:
    query = select(JobRow.id, JobRow.spec).where(JobRow.state.in_(ACTIVE_STATES))
    if tenant_id is not None:
        query = query.where(JobRow.tenant_id == tenant_id)
    return [(str(job_id), spec) for job_id, spec in session.execute(query.order_by(JobRow.id))]


def models_named_by_active_jobs(session: Session) -> set[str]:
    return {m for _, spec in _active_specs(session, None) for m in spec_model_ids(spec)}


def datasets_named_by_active_jobs(session: Session) -> set[str]:
    return {d for _, spec in _active_specs(session, None) for d in spec_dataset_ids(spec)}


def active_job_using_model(session: Session, tenant_id: str, model_id: str) -> str | None:
    """The id of a queued or running job of the tenant that reads the model, or None."""
    for job_id, spec in _active_specs(session, tenant_id):
        if model_id in spec_model_ids(spec):
            return job_id
    return None


def active_job_using_dataset(session: Session, tenant_id: str, dataset_id: str) -> str | None:
    for job_id, spec in _active_specs(session, tenant_id):
        if dataset_id in spec_dataset_ids(spec):
            return job_id
    return None
