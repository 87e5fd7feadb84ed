"""The auto recipe's finished candidates of a job, kept so that a new attempt resumes the
recipe (worker.recipe_candidates puts their models in the blob store and these rows in
the caller's transaction). A recipe's first attempt records its start; a candidate is
recorded once (the first attempt to finish it wins: both measured the same thing).
A fanned-out recipe's helpers claim the candidates they produce (`claim`, `renew`): a
claim lasts until its expiry, which its holder's worker keeps pushing forward."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.tables import RecipeCandidateRow, RecipeClaimRow, RecipeRunRow, utcnow


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
    measured_by: str | None = None


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
                    measured_by=candidate.measured_by,
                    created_at=utcnow(),
                )
            )
    except IntegrityError:
        return False
    return True


def claim(
    session: Session, job_id: str, recipe: str, key: str, holder: str, lease_s: float
) -> bool:
    """True when `holder` now holds the candidate for `lease_s`: it is not recorded, and
    nobody else's claim on it is live (a lapsed one is taken over)."""
    if get(session, job_id, recipe, key) is not None:
        return False
    now = utcnow()
    expires = now + timedelta(seconds=lease_s)
    row = session.get(RecipeClaimRow, (job_id, recipe, key), with_for_update=True)
    if row is None:
        try:
            with session.begin_nested():
                session.add(
                    RecipeClaimRow(
                        job_id=job_id, recipe=recipe, key=key, holder=holder, expires_at=expires
                    )
                )
        except IntegrityError:  # another holder claimed it meanwhile
            return False
        return True
    if row.holder != holder and row.expires_at > now:
        return False
    # conditional on what was read: of two takers of a lapsed claim only one wins, also
    # where the database takes no row lock (SQLite)
    taken = session.execute(
        update(RecipeClaimRow)
        .where(
            RecipeClaimRow.job_id == job_id,
            RecipeClaimRow.recipe == recipe,
            RecipeClaimRow.key == key,
            RecipeClaimRow.holder == row.holder,
            RecipeClaimRow.expires_at == row.expires_at,
        )
        .values(holder=holder, expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(taken, "rowcount", 0) or 0) == 1


def renew(session: Session, job_id: str, holder: str, lease_s: float) -> int:
    """Push the holder's claims on the job's candidates `lease_s` ahead; how many."""
    result = session.execute(
        update(RecipeClaimRow)
        .where(RecipeClaimRow.job_id == job_id, RecipeClaimRow.holder == holder)
        .values(expires_at=utcnow() + timedelta(seconds=lease_s))
    )
    return int(getattr(result, "rowcount", 0) or 0)


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
    session.execute(delete(RecipeClaimRow).where(RecipeClaimRow.job_id == job_id))
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
        measured_by=row.measured_by,
    )
