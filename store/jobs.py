"""The job lifecycle on the database: the row is the truth.

States: queued -> running -> succeeded | failed | cancelled. Every transition is a
conditional UPDATE (works alike on SQLite and PostgreSQL), so a job claimed twice runs
once and a worker whose lease was taken over cannot write over the new attempt.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store import outbox
from store.ids import new_id
from store.tables import ArtifactRow, JobEventRow, JobOutboxRow, JobRow, utcnow
from store.workers import QueueService

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
STATES = frozenset({"queued", "running"}) | FINAL_STATES


class JobNotFound(Exception):
    pass


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


class InvalidCursor(ValueError):
    """A pagination cursor this service did not issue."""


class JobAlreadyFinal(Exception):
    def __init__(self, state: str) -> None:
        super().__init__(f"the job already ended ({state})")
        self.state = state


@dataclass(frozen=True)
class ArtifactRecord:
    name: str
    media_type: str
    sha256: str
    size_bytes: int


# --- creation and reading -------------------------------------------------------------


def create_job(
    session: Session,
    *,
    tenant_id: str,
    spec: dict[str, Any],
    queue: str,
    request_sha256: str,
    idempotency_key: str | None,
    api_key_id: str | None = None,
    webhook_url: str | None = None,
    batch_id: str | None = None,
    method: str | None = None,
) -> tuple[JobRow, bool]:
    """Insert a queued job; with an idempotency key, return the earlier job instead.

    Returns (job, created). The job's message goes into the outbox in the same
    transaction (store.outbox): the caller commits, then drains it when `created`.
    `api_key_id` (the submitting key), `webhook_url`, `batch_id` and `method` (the
    steps' methods, the metrics' label) are stored as given.
    """
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, tenant_id, idempotency_key, request_sha256)
        if existing is not None:
            return existing, False
    job = JobRow(
        id=new_id("job"),
        tenant_id=tenant_id,
        spec=spec,
        queue=queue,
        state="queued",
        request_sha256=request_sha256,
        idempotency_key=idempotency_key,
        progress=0.0,
        attempt=0,
        cancel_requested=False,
        api_key_id=api_key_id,
        webhook_url=webhook_url,
        batch_id=batch_id,
        method=method,
    )
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        # A concurrent request with the same key won the insert: answer with its job.
        existing = _by_idempotency_key(session, tenant_id, idempotency_key or "", request_sha256)
        if existing is None:
            raise
        return existing, False
    add_event(session, job.id, 0, "created", "job created", {"queue": queue})
    outbox.add(session, job.id, queue)  # its message, committed with the job
    return job, True


def has_idempotency_key(session: Session, tenant_id: str, key: str) -> bool:
    query = select(JobRow.id).where(JobRow.tenant_id == tenant_id, JobRow.idempotency_key == key)
    return session.scalar(query) is not None


def _by_idempotency_key(
    session: Session, tenant_id: str, key: str, request_sha256: str
) -> JobRow | None:
    job = session.scalar(
        select(JobRow).where(JobRow.tenant_id == tenant_id, JobRow.idempotency_key == key)
    )
    if job is not None and job.request_sha256 != request_sha256:
        raise IdempotencyConflict(key)
    return job


def get_job(session: Session, job_id: str, *, tenant_id: str | None) -> JobRow:
    """The job; JobNotFound when it does not exist or belongs to another tenant than
    `tenant_id` (None: any tenant, for the worker and the reaper)."""
    job = session.get(JobRow, job_id)
    if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
        raise JobNotFound(job_id)
    return job


def _encode_cursor(job: JobRow) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises InvalidCursor for a cursor this service did not issue."""
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        when = datetime.fromisoformat(created_at)
        # In UTC here, as the column binds it: year 1 at +14:00 or year 9999 at -23:59
        # has no UTC time (OverflowError, a 500 from the query before).
        when = when.astimezone(UTC) if when.tzinfo is not None else when
    except (TypeError, ValueError, UnicodeDecodeError, OverflowError) as error:
        raise InvalidCursor("the cursor is not one this service issued") from error
    # Ids are service-made: one with NUL (which PostgreSQL cannot bind) is no cursor of ours.
    if when.tzinfo is None or not isinstance(job_id, str) or not job_id.isprintable():
        raise InvalidCursor("the cursor is not one this service issued")
    return when, job_id


def list_jobs(
    session: Session,
    *,
    tenant_id: str,
    state: str | None,
    limit: int,
    cursor: str | None,
    outcome: str | None = None,
    method: str | None = None,
) -> tuple[list[JobRow], str | None]:
    """The tenant's jobs, newest first; the cursor is opaque to clients (created_at and
    id of the last row). `method` keeps jobs with a step of that method."""
    query = (
        select(JobRow)
        .where(JobRow.tenant_id == tenant_id)
        .order_by(JobRow.created_at.desc(), JobRow.id.desc())
    )
    if state is not None:
        query = query.where(JobRow.state == state)
    if outcome is not None:
        query = query.where(JobRow.outcome == outcome)
    if cursor is not None:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(
            or_(
                JobRow.created_at < created_at,
                and_(JobRow.created_at == created_at, JobRow.id < job_id),
            )
        )
    if method is None:
        rows = list(session.scalars(query.limit(limit + 1)))
    else:
        # The steps live in the spec's JSON, which PostgreSQL and SQLite query apart: the
        # rows are read newest first in chunks and kept here until the page is full.
        rows = []
        for row in session.scalars(query.execution_options(yield_per=200)):
            if _has_method(row.spec, method):
                rows.append(row)
                if len(rows) > limit:
                    break
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def _has_method(spec: Mapping[str, Any], method: str) -> bool:
    steps = spec.get("steps")
    return isinstance(steps, list) and any(
        isinstance(step, Mapping) and step.get("method") == method for step in steps
    )


def list_events(session: Session, job_id: str, *, after_id: int, limit: int) -> list[JobEventRow]:
    query = (
        select(JobEventRow)
        .where(JobEventRow.job_id == job_id, JobEventRow.id > after_id)
        .order_by(JobEventRow.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def list_attempt_events(
    session: Session, job_id: str, attempt: int, *, kind: str
) -> list[JobEventRow]:
    """One attempt's events of one kind, oldest first (a report reads what the latest
    attempt has measured so far from its progress events)."""
    query = (
        select(JobEventRow)
        .where(
            JobEventRow.job_id == job_id,
            JobEventRow.attempt == attempt,
            JobEventRow.kind == kind,
        )
        .order_by(JobEventRow.id)
    )
    return list(session.scalars(query))


def list_artifacts(session: Session, job_id: str) -> list[ArtifactRow]:
    query = select(ArtifactRow).where(ArtifactRow.job_id == job_id).order_by(ArtifactRow.name)
    return list(session.scalars(query))


def get_artifact(session: Session, job_id: str, name: str) -> ArtifactRow | None:
    return session.scalar(
        select(ArtifactRow).where(ArtifactRow.job_id == job_id, ArtifactRow.name == name)
    )


def add_event(
    session: Session,
    job_id: str,
    attempt: int,
    kind: str,
    message: str,
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        JobEventRow(job_id=job_id, attempt=attempt, kind=kind, message=message, data=data or {})
    )


# The job's log keeps a running attempt's memory as it crosses these shares of its limit
# (at most one event each): if the attempt's worker is then lost, the reaper can tell a
# process the kernel most likely killed for memory from a worker that died of something
# else.
MEMORY_EVENT = "memory"
MEMORY_SAMPLE_SHARES = (0.5, 0.75, 0.9)
# An attempt lost after its engine reached this share of its limit was out of memory.
LOST_NEAR_MEMORY_LIMIT = 0.9


def record_memory_sample(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    peak_rss_bytes: int,
    growth_bytes: int,
    limit_bytes: int,
) -> bool:
    """A memory event for this attempt (growth: the engine's resident memory past what it
    held before the job's work began, the figure the limit applies to); False when the
    attempt no longer owns the job."""
    if session.scalar(select(JobRow.id).where(_owned(job_id, attempt))) is None:
        return False
    add_event(
        session,
        job_id,
        attempt,
        MEMORY_EVENT,
        f"memory: {growth_bytes} of the job's {limit_bytes} bytes "
        f"({100 * growth_bytes / limit_bytes:.0f}%), peak resident {peak_rss_bytes} bytes",
        {
            "peak_rss_bytes": peak_rss_bytes,
            "growth_bytes": growth_bytes,
            "limit_bytes": limit_bytes,
        },
    )
    return True


def last_memory_sample(session: Session, job_id: str, attempt: int) -> dict[str, Any] | None:
    """The data of the attempt's last memory event, if it had one."""
    return session.scalar(
        select(JobEventRow.data)
        .where(
            JobEventRow.job_id == job_id,
            JobEventRow.attempt == attempt,
            JobEventRow.kind == MEMORY_EVENT,
        )
        .order_by(JobEventRow.id.desc())
        .limit(1)
    )


def lost_for_memory(sample: dict[str, Any] | None) -> bool:
    """A lost attempt whose last memory sample was this near its limit was out of memory."""
    if not sample or not sample.get("limit_bytes"):
        return False
    return int(sample["growth_bytes"]) >= LOST_NEAR_MEMORY_LIMIT * int(sample["limit_bytes"])


# --- transitions ----------------------------------------------------------------------


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.state == "queued")
        .values(enqueued_at=utcnow())
    )


def claim(session: Session, job_id: str, *, worker: str, lease_s: float) -> int | None:
    """Move a queued job to running for this worker; returns the attempt number or None.

    None means someone else holds it, it ended, or it was cancelled: the message is a
    duplicate and must be dropped.
    """
    now = utcnow()
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.state == "queued", JobRow.cancel_requested.is_(False))
        .values(
            state="running",
            attempt=JobRow.attempt + 1,
            worker=worker,
            lease_expires_at=now + timedelta(seconds=lease_s),
            started_at=now,
            resends=0,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    attempt = session.scalar(select(JobRow.attempt).where(JobRow.id == job_id))
    assert attempt is not None
    add_event(session, job_id, attempt, "started", f"attempt {attempt} started on {worker}")
    return attempt


def _owned(job_id: str, attempt: int) -> Any:
    return and_(JobRow.id == job_id, JobRow.attempt == attempt, JobRow.state == "running")


def renew_lease(session: Session, job_id: str, attempt: int, *, lease_s: float) -> bool:
    """Extend this attempt's lease; False means the attempt lost the job."""
    result = session.execute(
        update(JobRow)
        .where(_owned(job_id, attempt))
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def is_cancel_requested(session: Session, job_id: str) -> bool:
    return bool(session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))


def record_progress(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    progress: float,
    current_step: str | None,
    message: str,
    data: dict[str, Any],
) -> bool:
    result = session.execute(
        update(JobRow)
        .where(_owned(job_id, attempt))
        .values(progress=progress, current_step=current_step)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id, attempt, "progress", message, {"progress": progress, **data})
    return True


def set_model(session: Session, job_id: str, attempt: int, model_id: str) -> bool:
    """Name the stored copy of a registry model (spec model_uri) in the job's spec, so
    later attempts and search helpers read the same bytes; False if the attempt lost the
    job (nothing written)."""
    spec = session.scalar(select(JobRow.spec).where(_owned(job_id, attempt)).with_for_update())
    if spec is None:
        return False
    result = session.execute(
        update(JobRow)
        .where(_owned(job_id, attempt))
        .values(spec={**spec, "model_id": model_id})
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def finish(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    state: str,
    result: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    artifacts: list[ArtifactRecord] = (),  # type: ignore[assignment]
    event_data: dict[str, Any] | None = None,
) -> bool:
    """End this attempt; artifacts are published in the same transaction as the state.
    `event_data` joins the data of the final event (e.g. the peak memory of a job that
    ran out of it).

    False means the attempt no longer owns the job: nothing was written.
    """
    if state not in FINAL_STATES:
        raise ValueError(f"not a final state: {state}")
    values: dict[str, Any] = {
        "state": state,
        "finished_at": utcnow(),
        "lease_expires_at": None,
        "error_code": error_code,
        "error_message": error_message,
    }
    if result is not None:
        values["result"] = result
    values["outcome"] = outcome_of(state, result)
    if state == "succeeded":
        values["progress"] = 1.0
        values["current_step"] = None
    updated = session.execute(
        update(JobRow)
        .where(_owned(job_id, attempt))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if updated.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.execute(delete(ArtifactRow).where(ArtifactRow.job_id == job_id))
    for artifact in artifacts:
        session.add(
            ArtifactRow(
                job_id=job_id,
                name=artifact.name,
                media_type=artifact.media_type,
                sha256=artifact.sha256,
                size_bytes=artifact.size_bytes,
            )
        )
    message = state if error_message is None else f"{state}: {error_message}"
    add_event(
        session, job_id, attempt, state, message, {**(event_data or {}), "error_code": error_code}
    )
    return True


def outcome_of(state: str, result: dict[str, Any] | None) -> str | None:
    """What a final job came to: the verdict's outcome for a success (None for a result
    from before outcomes existed), else the state (failed, cancelled)."""
    if state != "succeeded":
        return state if state in FINAL_STATES else None
    verdict = (result or {}).get("verdict") or {}
    outcome = verdict.get("outcome")
    return outcome if isinstance(outcome, str) else None


def outcome_reason(job: JobRow) -> str | None:
    """The outcome in words: the verdict's reason for a success, the error for a failure."""
    if job.state == "succeeded":
        verdict = (job.result or {}).get("verdict") or {}
        reason = verdict.get("outcome_reason")
        return reason if isinstance(reason, str) and reason else None
    if job.state == "failed":
        return job.error_message or job.error_code
    if job.state == "cancelled":
        return "cancelled on request" if job.cancel_requested else "cancelled"
    return None


def release(session: Session, job_id: str, attempt: int, reason: str) -> bool:
    """Put a running attempt's job back in the queue (its worker is shutting down);
    False when the attempt no longer owns the job."""
    result = session.execute(
        update(JobRow)
        .where(_owned(job_id, attempt))
        .values(
            state="queued", worker=None, lease_expires_at=None, enqueued_at=utcnow(), resends=0
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id, attempt, "released", reason)
    return True


def request_cancel(session: Session, job_id: str, *, tenant_id: str | None) -> JobRow:
    """A queued job is cancelled at once; a running one is flagged for its worker to stop."""
    job = get_job(session, job_id, tenant_id=tenant_id)
    if job.state in FINAL_STATES:
        raise JobAlreadyFinal(job.state)
    session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.state == "queued")
        .values(
            state="cancelled", outcome="cancelled", finished_at=utcnow(), cancel_requested=True
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.state == "running")
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    add_event(session, job_id, job.attempt, "cancel_requested", "cancellation requested")
    session.flush()
    session.refresh(job)
    return job


def queued_queues(session: Session) -> list[str]:
    """The queues that have queued jobs."""
    return list(session.scalars(select(JobRow.queue).where(JobRow.state == "queued").distinct()))


def reap(
    session: Session,
    *,
    requeue_queued_after_s: float,
    max_attempts: int,
    max_resends: int | None = None,
    queues: Mapping[str, QueueService] | None = None,
    absent_worker_expiry_s: float | None = None,
) -> list[JobRow]:
    """Recover jobs the broker alone would lose; returns the jobs sent again (their
    messages are in the outbox, committed with this transaction: drain it after).

    A running job whose lease expired belongs to a dead worker: it goes back to queued,
    or fails once its attempts are used up. A queued job whose message was sent long ago
    and never claimed (lost message, killed API between commit and send) is sent again;
    duplicates are harmless because `claim` runs a job once.

    Re-sends back off (after requeue_queued_after_s, then twice that, ...) and stop after
    `max_resends`: the job then fails `never_claimed`. With `queues` (the workers seen
    per queue, store.workers.queue_services) a queue no live worker consumes gets no
    re-sends, and its jobs fail `no_worker_available` once it has been unserved for
    `absent_worker_expiry_s`; a queue whose live workers are all busy is left alone.
    """
    if not _reaper_lock(session):
        return []  # another worker's reaper holds this pass: it handles every job once
    now = utcnow()
    expired = list(
        session.scalars(
            select(JobRow).where(JobRow.state == "running", JobRow.lease_expires_at < now)
        )
    )
    to_enqueue: list[JobRow] = []
    for job in expired:
        if job.cancel_requested:
            if _moved(
                session,
                update(JobRow)
                .where(_owned(job.id, job.attempt))
                .values(
                    state="cancelled", outcome="cancelled", finished_at=now, lease_expires_at=None
                ),
            ):
                add_event(session, job.id, job.attempt, "cancelled", "cancelled (worker lost)")
        elif lost_for_memory(sample := last_memory_sample(session, job.id, job.attempt)):
            # Never retried unchanged: the same job on the same limit would be killed again.
            assert sample is not None
            message = (
                f"the worker running attempt {job.attempt} ({job.worker}) was lost while "
                f"the job used {sample['growth_bytes']} of its memory limit of "
                f"{sample['limit_bytes']} bytes: most likely killed for running out of "
                f"memory; peak resident memory seen {sample['peak_rss_bytes']} bytes"
            )
            if _moved(
                session,
                update(JobRow)
                .where(_owned(job.id, job.attempt))
                .values(
                    state="failed",
                    outcome="failed",
                    finished_at=now,
                    lease_expires_at=None,
                    error_code="memory_limit_exceeded",
                    error_message=message,
                ),
            ):
                add_event(
                    session,
                    job.id,
                    job.attempt,
                    "failed",
                    message,
                    {
                        "peak_rss_bytes": sample["peak_rss_bytes"],
                        "limit_bytes": sample["limit_bytes"],
                        "worker_lost": True,
                    },
                )
        elif job.attempt >= max_attempts:
            if _moved(
                session,
                update(JobRow)
                .where(_owned(job.id, job.attempt))
                .values(
                    state="failed",
                    outcome="failed",
                    finished_at=now,
                    lease_expires_at=None,
                    error_code="attempts_exhausted",
                    error_message=f"the worker was lost {job.attempt} times",
                ),
            ):
                add_event(session, job.id, job.attempt, "failed", "attempts exhausted")
        else:
            if not _moved(
                session,
                update(JobRow)
                .where(_owned(job.id, job.attempt))
                .values(
                    state="queued", worker=None, lease_expires_at=None, enqueued_at=now, resends=0
                ),
            ):
                continue  # its worker finished it, or another pass requeued it
            add_event(
                session,
                job.id,
                job.attempt,
                "requeued",
                f"lease of attempt {job.attempt} expired (worker {job.worker} lost)",
            )
            outbox.add(session, job.id, job.queue)
            to_enqueue.append(job)
    stale_before = now - timedelta(seconds=requeue_queued_after_s)
    stale = list(
        session.scalars(
            select(JobRow).where(
                JobRow.state == "queued",
                or_(JobRow.enqueued_at.is_(None), JobRow.enqueued_at < stale_before),
                JobRow.created_at < stale_before,
                # a message still in the outbox was never sent: not lost, not re-sent
                ~exists().where(JobOutboxRow.job_id == JobRow.id),
            )
        )
    )
    if queues is not None and absent_worker_expiry_s is not None:
        _expire_unserved(session, queues, absent_worker_expiry_s, now)
    for job in stale:
        service = None if queues is None else queues.get(job.queue)
        if queues is not None and (service is None or service.live == 0):
            # Nothing consumes the queue: a message sent again would only wait beside the
            # first (the job expires instead, above).
            continue
        if service is not None and service.saturated:
            continue  # every live worker is busy: the job waits its turn, it is not lost
        sent_at = job.enqueued_at or job.created_at
        due_at = sent_at + timedelta(seconds=requeue_queued_after_s * 2**job.resends)
        if now < due_at:
            continue
        if max_resends is not None and job.resends >= max_resends:
            _fail_queued(
                session,
                job,
                now,
                "never_claimed",
                f"the job's message was sent {job.resends + 1} times since "
                f"{job.created_at.isoformat(timespec='seconds')} and no worker on queue "
                f"{job.queue!r} claimed it ({service.live if service else 'unknown'} live)",
            )
            continue
        sent = session.execute(
            update(JobRow)
            # conditioned on the count read: a concurrent reaper's pass re-sends it once
            .where(JobRow.id == job.id, JobRow.state == "queued", JobRow.resends == job.resends)
            .values(enqueued_at=now, resends=JobRow.resends + 1)
            .execution_options(synchronize_session=False)
        )
        if sent.rowcount != 1:  # type: ignore[attr-defined]
            continue
        resend = job.resends + 1
        add_event(
            session,
            job.id,
            job.attempt,
            "requeued",
            "message not claimed in time: sent again"
            + (f" ({resend} of at most {max_resends})" if max_resends is not None else ""),
            {"resend": resend, "max_resends": max_resends, "queue": job.queue},
        )
        outbox.add(session, job.id, job.queue)
        to_enqueue.append(job)
    return to_enqueue


# Any fixed 63-bit number: the reaper's advisory lock on PostgreSQL ("squeeze reaper").
REAPER_LOCK_KEY = 0x5351_5A52_4541_5052


def _reaper_lock(session: Session) -> bool:
    """Make this pass the only one until its transaction ends; False when another
    worker's pass holds it. PostgreSQL: a transaction-level advisory lock (released at
    commit or rollback, never left behind by a dead worker). SQLite has one writer at a
    time: the first update of a pass waits for the other pass's commit, and every
    transition below is conditioned on the row it read (`_moved`), so a job is handled
    once there too."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    locked = session.scalar(
        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": REAPER_LOCK_KEY}
    )
    return bool(locked)


def _moved(session: Session, statement: Any) -> bool:
    """Run a conditional update; True when it changed the one row (else another pass or
    the job's worker got there first, and no event or message follows)."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def _expire_unserved(
    session: Session, queues: Mapping[str, QueueService], expiry_s: float, now: datetime
) -> None:
    """Fail the queued jobs of queues no live worker consumes once the queue has been
    unserved for `expiry_s` (counted from the job's creation or the queue's last beat,
    whichever is later). Queues with queued jobs but absent from `queues` count as
    unserved and never seen."""
    cutoff = now - timedelta(seconds=expiry_s)
    served = [name for name, service in queues.items() if service.live > 0]
    candidates = session.scalars(
        select(JobRow).where(
            JobRow.state == "queued", JobRow.created_at < cutoff, JobRow.queue.not_in(served)
        )
    )
    for job in list(candidates):
        service = queues.get(job.queue)
        if service is not None and service.live > 0:
            continue
        last_seen = service.last_seen_at if service is not None else None
        if last_seen is not None and last_seen >= cutoff:
            continue
        _expire(session, job, expiry_s, now)


def _expire(session: Session, job: JobRow, expiry_s: float, now: datetime) -> None:
    _fail_queued(
        session,
        job,
        now,
        "no_worker_available",
        f"no live worker consumed queue {job.queue!r} for {expiry_s:g} s "
        "(absent_worker_expiry_s): start a worker on that queue, or submit the job for a "
        "device a running worker has",
    )


def _fail_queued(session: Session, job: JobRow, now: datetime, code: str, message: str) -> None:
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job.id, JobRow.state == "queued")
        .values(
            state="failed",
            outcome="failed",
            finished_at=now,
            error_code=code,
            error_message=message,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        add_event(
            session, job.id, job.attempt, "failed", f"failed: {message}", {"error_code": code}
        )
