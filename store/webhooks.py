"""Webhook deliveries on the database: one row per job that names a webhook URL.

`waiting` (written with the job) -> `pending` once the job is final (due at
`next_attempt_at`) -> `delivered`, or `failed` after the last attempt. Every change is a
conditional UPDATE, so the delivery passes of several workers may run at once: a pass
claims a due delivery by pushing its `next_attempt_at` past the attempt's duration, and
only the pass whose UPDATE matched sends it. A pass that dies mid-send loses nothing:
the delivery falls due again when the claim runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store.jobs import FINAL_STATES, add_event
from store.tables import ApiKeyRow, JobRow, WebhookDeliveryRow

WAITING, PENDING, DELIVERED, FAILED = "waiting", "pending", "delivered", "failed"


@dataclass(frozen=True)
class Delivery:
    """What one attempt needs, read in one transaction."""

    id: int
    job: JobRow
    url: str
    # the number of this attempt (1 for the first)
    attempt: int
    # the submitting key's secret; None if the job has no key (then it cannot be signed)
    secret: str | None


def watch_job(session: Session, job_id: str, url: str) -> None:
    """Deliver the job's record to `url` once the job is final."""
    session.add(WebhookDeliveryRow(job_id=job_id, url=url, state=WAITING, attempts=0))


def activate_finished(session: Session, *, now: datetime) -> int:
    """Make the deliveries of jobs that reached a final state due now; returns how many.

    Whatever ended the job (its worker, a cancel, the reaper) is covered: this looks at
    the job's state, not at the code path that set it.
    """
    final_jobs = select(JobRow.id).where(JobRow.state.in_(FINAL_STATES))
    result = session.execute(
        update(WebhookDeliveryRow)
        .where(WebhookDeliveryRow.state == WAITING, WebhookDeliveryRow.job_id.in_(final_jobs))
        .values(state=PENDING, next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def claim_due(session: Session, *, now: datetime, hold_s: float, limit: int) -> list[int]:
    """Claim up to `limit` due deliveries for `hold_s` seconds; returns their ids."""
    due = session.scalars(
        select(WebhookDeliveryRow.id)
        .where(WebhookDeliveryRow.state == PENDING, WebhookDeliveryRow.next_attempt_at <= now)
        .order_by(WebhookDeliveryRow.next_attempt_at)
        .limit(limit)
    ).all()
    claimed = []
    for delivery_id in due:
        result = session.execute(
            update(WebhookDeliveryRow)
            .where(
                WebhookDeliveryRow.id == delivery_id,
                WebhookDeliveryRow.state == PENDING,
                WebhookDeliveryRow.next_attempt_at <= now,
            )
            .values(next_attempt_at=now + timedelta(seconds=hold_s))
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append(delivery_id)
    return claimed


def load(session: Session, delivery_id: int) -> Delivery:
    row = session.get(WebhookDeliveryRow, delivery_id)
    if row is None:
        raise LookupError(f"no webhook delivery {delivery_id}")
    job = session.get(JobRow, row.job_id)
    assert job is not None  # the delivery's foreign key
    key = None if job.api_key_id is None else session.get(ApiKeyRow, job.api_key_id)
    return Delivery(
        id=row.id,
        job=job,
        url=row.url,
        attempt=row.attempts + 1,
        secret=None if key is None else key.webhook_secret,
    )


def record_attempt(
    session: Session,
    delivery: Delivery,
    *,
    now: datetime,
    status: int | None,
    error: str | None,
    retry_at: datetime | None,
    event_kind: str,
    event_message: str,
    event_data: dict[str, Any],
) -> None:
    """Store one attempt's outcome and its job event. `error` None: delivered; else
    pending again at `retry_at`, or failed for good when `retry_at` is None."""
    if error is None:
        values: dict[str, Any] = {"state": DELIVERED, "delivered_at": now}
    elif retry_at is not None:
        values = {"state": PENDING, "next_attempt_at": retry_at}
    else:
        values = {"state": FAILED, "next_attempt_at": None}
    session.execute(
        update(WebhookDeliveryRow)
        .where(WebhookDeliveryRow.id == delivery.id)
        .values(attempts=delivery.attempt, last_status=status, last_error=error, **values)
        .execution_options(synchronize_session=False)
    )
    add_event(
        session, delivery.job.id, delivery.job.attempt, event_kind, event_message, event_data
    )


def for_job(session: Session, job_id: str) -> WebhookDeliveryRow | None:
    return session.scalar(select(WebhookDeliveryRow).where(WebhookDeliveryRow.job_id == job_id))
