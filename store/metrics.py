"""Figures for the Prometheus scrape, read from the database at scrape time.

Every worker process writes its jobs' rows, so rows are the one place where all of them
are counted; nothing is kept in a process that could die or be one of several.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from store.jobs import FINAL_STATES
from store.tables import JobRow


@dataclass(frozen=True)
class DurationHistogram:
    method: str
    state: str
    # cumulative: jobs that took at most each bucket's bound, in the bounds' order
    bucket_counts: list[int]
    count: int
    sum_s: float


def jobs_by_state(session: Session) -> dict[str, int]:
    query = select(JobRow.state, func.count()).group_by(JobRow.state)
    return {str(state): int(count) for state, count in session.execute(query)}


def queued_by_queue(session: Session) -> dict[str, int]:
    query = (
        select(JobRow.queue, func.count()).where(JobRow.state == "queued").group_by(JobRow.queue)
    )
    return {str(queue): int(count) for queue, count in session.execute(query)}


def _duration_s(dialect: str) -> Any:
    """Seconds from a job's (last) start to its end, in the database's own arithmetic."""
    if dialect == "postgresql":
        return func.extract("epoch", JobRow.finished_at - JobRow.started_at)
    # SQLite keeps timestamps as text; julianday() reads them to the millisecond
    return (func.julianday(JobRow.finished_at) - func.julianday(JobRow.started_at)) * 86400.0


def duration_histograms(session: Session, bounds_s: Sequence[float]) -> list[DurationHistogram]:
    """Per method and final state, how long finished jobs ran, bucketed in the database
    (one grouped query, whatever the number of jobs)."""
    duration = _duration_s(session.get_bind().dialect.name)
    buckets = [func.sum(case((duration <= bound, 1), else_=0)) for bound in bounds_s]
    method = func.coalesce(JobRow.method, "unknown")
    query = (
        select(method, JobRow.state, func.count(), func.sum(duration), *buckets)
        .where(
            JobRow.state.in_(FINAL_STATES),
            JobRow.started_at.is_not(None),
            JobRow.finished_at.is_not(None),
        )
        .group_by(method, JobRow.state)
    )
    return [
        DurationHistogram(
            method=str(row[0]),
            state=str(row[1]),
            count=int(row[2]),
            sum_s=float(row[3] or 0.0),
            bucket_counts=[int(value or 0) for value in row[4:]],
        )
        for row in session.execute(query)
    ]
