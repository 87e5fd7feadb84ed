"""Batches: one spec over many models, each model one job (`jobs.batch_id`).

The batch row and its jobs are inserted in the caller's transaction, so a batch exists
with all its jobs or not at all. Counts are read from the jobs, never stored twice.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.catalog import NotFound
from store.ids import new_id
from store.jobs import STATES, IdempotencyConflict, decode_cursor
from store.tables import BatchRow, JobRow


@dataclass
class BatchCounts:
    """How a batch's jobs stand: jobs per state and the sum of their progress."""

    by_state: dict[str, int] = field(default_factory=lambda: dict.fromkeys(sorted(STATES), 0))
    progress_sum: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


def create_batch(
    session: Session,
    *,
    tenant_id: str,
    spec: dict[str, Any],
    webhook_url: str | None,
    idempotency_key: str | None,
    request_sha256: str,
) -> tuple[BatchRow, bool]:
    """Insert a batch; with an idempotency key already used, return that batch instead
    (IdempotencyConflict when it was used for another request). Returns (batch, created)."""
    if idempotency_key is not None:
        existing = find_replay(session, tenant_id, idempotency_key, request_sha256)
        if existing is not None:
            return existing, False
    batch = BatchRow(
        id=new_id("bat"),
        tenant_id=tenant_id,
        spec=spec,
        webhook_url=webhook_url,
        idempotency_key=idempotency_key,
        request_sha256=request_sha256,
    )
    try:
        with session.begin_nested():
            session.add(batch)
            session.flush()
    except IntegrityError:
        # a concurrent request with the same key won the insert
        existing = find_replay(session, tenant_id, idempotency_key or "", request_sha256)
        if existing is None:
            raise
        return existing, False
    return batch, True


def find_replay(
    session: Session, tenant_id: str, key: str, request_sha256: str
) -> BatchRow | None:
    batch = session.scalar(
        select(BatchRow).where(BatchRow.tenant_id == tenant_id, BatchRow.idempotency_key == key)
    )
    if batch is not None and batch.request_sha256 != request_sha256:
        raise IdempotencyConflict(key)
    return batch


def get_batch(session: Session, batch_id: str, *, tenant_id: str) -> BatchRow:
    """The tenant's batch; NotFound for an unknown id or another tenant's batch."""
    batch = session.get(BatchRow, batch_id)
    if batch is None or batch.tenant_id != tenant_id:
        raise NotFound("batch", batch_id)
    return batch


def batch_jobs(session: Session, batch_id: str) -> list[JobRow]:
    # creation order, which is the order of the batch's model_ids
    query = (
        select(JobRow)
        .where(JobRow.batch_id == batch_id)
        .order_by(JobRow.created_at, JobRow.id)
    )
    return list(session.scalars(query))


def counts(session: Session, batch_ids: list[str]) -> dict[str, BatchCounts]:
    """Jobs per state and summed progress of each batch, in one grouped query."""
    result: dict[str, BatchCounts] = defaultdict(BatchCounts)
    if not batch_ids:
        return result
    query = (
        select(JobRow.batch_id, JobRow.state, func.count(), func.sum(JobRow.progress))
        .where(JobRow.batch_id.in_(batch_ids))
        .group_by(JobRow.batch_id, JobRow.state)
    )
    for batch_id, state, count, progress in session.execute(query):
        entry = result[str(batch_id)]
        entry.by_state[state] = int(count)
        entry.progress_sum += float(progress or 0.0)
    return result


def _encode_cursor(created_at: datetime, batch_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), batch_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def list_batches(
    session: Session, *, tenant_id: str, limit: int, cursor: str | None
) -> tuple[list[BatchRow], str | None]:
    """The tenant's batches, newest first; InvalidCursor for a cursor not issued here."""
    query = (
        select(BatchRow)
        .where(BatchRow.tenant_id == tenant_id)
        .order_by(BatchRow.created_at.desc(), BatchRow.id.desc())
    )
    if cursor is not None:
        created_at, batch_id = decode_cursor(cursor)
        query = query.where(
            or_(
                BatchRow.created_at < created_at,
                and_(BatchRow.created_at == created_at, BatchRow.id < batch_id),
            )
        )
    rows = list(session.scalars(query.limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        next_cursor = _encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id)
    return rows[:limit], next_cursor
