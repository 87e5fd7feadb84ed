"""The auto recipe's finished candidates of a job, kept so that a new attempt resumes the
recipe (worker.recipe_candidates puts their models in the blob store and these rows in
the caller's transaction). A recipe's first attempt records its start; a candidate is
recorded once (the first attempt to finish it wins: both measured the same thing)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.tables import RecipeCandidateRow, RecipeRunRow, utcnow


@dataclass(frozen=True)
class RecipeStart:
    started_at: datetime
    first_attempt: int


@dataclass(frozen=True)
class CandidateRecord:
    """What is kept of one finished candidate (its blobs already stored)."""

    key: str
    attempt: int
    seconds: float
    measurement: dict[str, Any] | None
    details: dict[str, Any]
    note: str | None = None
    model_file: str | None = None
    sha256: str | None = None
    float_model_file: str | None = None
    float_sha256: str | None = None


def begin(session: Session, job_id: str, recipe: str, attempt: int) -> RecipeStart:
    """When the recipe's first attempt began; recorded now when this is its first."""
    existing = session.get(RecipeRunRow, (job_id, recipe))
    if existing is None:
        try:
            with session.begin_nested():
                session.add(
                    RecipeRunRow(
                        job_id=job_id, recipe=recipe, first_attempt=attempt, started_at=utcnow()
                    )
                )
        except IntegrityError:  # another attempt recorded it meanwhile
            pass
        existing = session.get(RecipeRunRow, (job_id, recipe), populate_existing=True)
        assert existing is not None
    return RecipeStart(existing.started_at, existing.first_attempt)


def finished(session: Session, job_id: str, recipe: str) -> list[CandidateRecord]:
    """The recipe's recorded candidates, in the order they were recorded."""
    rows = session.scalars(
        select(RecipeCandidateRow)
        .where(RecipeCandidateRow.job_id == job_id, RecipeCandidateRow.recipe == recipe)
        .order_by(RecipeCandidateRow.id)
    )
    return [_record_of(row) for row in rows]


def get(session: Session, job_id: str, recipe: str, key: str) -> CandidateRecord | None:
    row = session.scalar(
        select(RecipeCandidateRow).where(
            RecipeCandidateRow.job_id == job_id,
            RecipeCandidateRow.recipe == recipe,
            RecipeCandidateRow.key == key,
        )
    )
    return None if row is None else _record_of(row)


def record(session: Session, job_id: str, recipe: str, candidate: CandidateRecord) -> bool:
    """Keep the candidate; False when one with its key was kept already."""
    try:
        with session.begin_nested():
            session.add(
                RecipeCandidateRow(
                    job_id=job_id,
                    recipe=recipe,
                    key=candidate.key,
                    state="done" if candidate.measurement is not None else "failed",
                    attempt=candidate.attempt,
                    seconds=candidate.seconds,
                    measurement=candidate.measurement,
                    details=candidate.details,
                    note=candidate.note,
                    model_file=candidate.model_file,
                    sha256=candidate.sha256,
                    float_model_file=candidate.float_model_file,
                    float_sha256=candidate.float_sha256,
                    created_at=utcnow(),
                )
            )
    except IntegrityError:
        return False
    return True


def forget_job(session: Session, job_id: str) -> list[str]:
    """Delete the job's recipe rows (its recipes ended); the sha256s their candidates
    named, to release after the commit."""
    rows = session.execute(
        select(RecipeCandidateRow.sha256, RecipeCandidateRow.float_sha256).where(
            RecipeCandidateRow.job_id == job_id
        )
    ).all()
    session.execute(delete(RecipeCandidateRow).where(RecipeCandidateRow.job_id == job_id))
    session.execute(delete(RecipeRunRow).where(RecipeRunRow.job_id == job_id))
    return [sha for pair in rows for sha in pair if sha is not None]


def _record_of(row: RecipeCandidateRow) -> CandidateRecord:
    return CandidateRecord(
        key=row.key,
        attempt=row.attempt,
        seconds=row.seconds,
        measurement=row.measurement,
        details=row.details,
        note=row.note,
        model_file=row.model_file,
        sha256=row.sha256,
        float_model_file=row.float_model_file,
        float_sha256=row.float_sha256,
    )
