"""The transactional outbox of run_job messages.

A job's message is written as a row in the transaction that queues the job (at
submission, and when the reaper requeues or re-sends it), so a broker that is down
when the job is accepted loses nothing and delays nothing beyond its own outage: the
API tries to send at once, and the API's timer and every worker's periodic pass send
what is left as soon as the broker answers (`drain`). A row is deleted once the broker
took its message; a message sent twice is harmless (`jobs.claim` runs a job once), but
drainers lock the rows they send (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: the
delete before the send takes the single write lock), so each row is sent once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from store.db import transaction
from store.tables import JobOutboxRow, JobRow, utcnow

log = logging.getLogger(__name__)

# rows one pass sends at most (the next pass takes the rest)
DRAIN_BATCH = 200


@dataclass(frozen=True)
class Backlog:
    """Messages waiting in the outbox and the age of the oldest (None when empty)."""

    pending: int
    oldest_age_s: float | None


@dataclass(frozen=True)
class DrainResult:
    sent: list[str]  # job ids whose message the broker took
    error: str | None  # why the pass stopped early (the broker did not answer)


def add(session: Session, job_id: str, queue: str) -> None:
    """Queue the job's message, in the caller's transaction (it is sent after commit)."""
    session.add(JobOutboxRow(job_id=job_id, queue=queue, created_at=utcnow(), attempts=0))


def backlog(session: Session, now: datetime | None = None) -> Backlog:
    count, oldest = session.execute(
        select(func.count(JobOutboxRow.id), func.min(JobOutboxRow.created_at))
    ).one()
    if not count or oldest is None:
        return Backlog(pending=0, oldest_age_s=None)
    if oldest.tzinfo is None:  # defensive: SQLite keeps no zone
        oldest = oldest.replace(tzinfo=UTC)
    age_s = max(0.0, ((now or utcnow()) - oldest).total_seconds())
    return Backlog(pending=int(count), oldest_age_s=age_s)


def drain(
    sessions: sessionmaker[Session],
    send: Callable[[str, str], None],
    *,
    job_ids: Iterable[str] | None = None,
    limit: int = DRAIN_BATCH,
) -> DrainResult:
    """Send the outbox's messages (only those of `job_ids` when given), oldest first.

    Each row is deleted and sent inside a savepoint: a send that fails rolls its delete
    back, records the error on the row and ends the pass (the broker is down: the next
    pass tries again). Rows another drainer holds are skipped."""
    sent: list[str] = []
    with transaction(sessions) as session:
        query = (
            select(JobOutboxRow, JobRow.state)
            .join(JobRow, JobRow.id == JobOutboxRow.job_id)
            .order_by(JobOutboxRow.id)
            .limit(limit)
        )
        if job_ids is not None:
            query = query.where(JobOutboxRow.job_id.in_(list(job_ids)))
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True, of=JobOutboxRow)
        rows = list(session.execute(query).tuples())
        for row, state in rows:
            if state != "queued":  # cancelled (or claimed through an older message)
                session.execute(
                    delete(JobOutboxRow)
                    .where(JobOutboxRow.id == row.id)
                    .execution_options(synchronize_session=False)
                )
                continue
            try:
                with session.begin_nested():
                    taken = session.execute(
                        delete(JobOutboxRow)
                        .where(JobOutboxRow.id == row.id)
                        .execution_options(synchronize_session=False)
                    )
                    if taken.rowcount != 1:  # type: ignore[attr-defined]
                        continue  # another drainer sent it
                    send(row.job_id, row.queue)
            except Exception as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
                session.execute(
                    update(JobOutboxRow)
                    .where(JobOutboxRow.id == row.id)
                    .values(
                        attempts=JobOutboxRow.attempts + 1,
                        last_error=reason,
                        last_attempt_at=utcnow(),
                    )
                    .execution_options(synchronize_session=False)
                )
                log.warning(
                    "outbox: could not send job %s to queue %s (%d left): %s",
                    row.job_id,
                    row.queue,
                    len(rows) - len(sent),
                    reason,
                )
                return DrainResult(sent=sent, error=reason)
            session.execute(
                update(JobRow)
                .where(JobRow.id == row.job_id, JobRow.state == "queued")
                .values(enqueued_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            sent.append(row.job_id)
    return DrainResult(sent=sent, error=None)
