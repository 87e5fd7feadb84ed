"""Two reaper passes at once (the reapers of two workers) handle each job once: one
event, one message, on a real PostgreSQL (advisory lock) and on SQLite (conditional
transitions)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from store import jobs
from store.db import transaction
from store.tables import JobEventRow, JobOutboxRow, JobRow, utcnow
from tests.services import database_with_tenant

TENANT = "ten_reaper_race"
SPEC = {"model_id": "mdl_x", "eval_dataset_id": "ds_x", "steps": [{"method": "quantize"}]}
JOBS = 12


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with database_with_tenant(request, tmp_path, TENANT, "reaper-race") as (
        engine,
        factory,
    ):
        yield factory
        with engine.begin() as connection:  # the session database is shared
            connection.execute(JobRow.__table__.delete().where(JobRow.tenant_id == TENANT))


def reap(session: Session) -> list[str]:
    return [
        job.id
        for job in jobs.reap(
            session, requeue_queued_after_s=300, max_attempts=3, max_resends=5
        )
    ]


def running_with_expired_leases(sessions: sessionmaker[Session], count: int) -> list[str]:
    ids = []
    with transaction(sessions) as session:
        for index in range(count):
            job, _ = jobs.create_job(
                session, tenant_id=TENANT, spec=SPEC, queue="cpu",
                request_sha256=f"{index:064d}", idempotency_key=None,
            )  # fmt: skip
            ids.append(job.id)
        session.flush()
        session.execute(delete(JobOutboxRow).where(JobOutboxRow.job_id.in_(ids)))
    for job_id in ids:
        with transaction(sessions) as session:
            assert jobs.claim(session, job_id, worker="dead", lease_s=60) == 1
    with transaction(sessions) as session:
        session.execute(
            update(JobRow)
            .where(JobRow.id.in_(ids))
            .values(lease_expires_at=utcnow() - timedelta(seconds=5))
        )
    return ids


def test_two_concurrent_reaper_passes_requeue_an_expired_lease_once(
    sessions: sessionmaker[Session],
) -> None:
    ids = running_with_expired_leases(sessions, JOBS)
    second: list[str] = []
    errors: list[BaseException] = []

    def other_worker_pass() -> None:
        try:
            with transaction(sessions) as session:
                second.extend(reap(session))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    # The first pass has handled every job but not committed when the second starts:
    # the second reads the jobs as still running (PostgreSQL and SQLite's WAL readers
    # see the last commit), exactly the overlap of two workers' periodic passes.
    with transaction(sessions) as first_session:
        first = reap(first_session)
        other = threading.Thread(target=other_worker_pass)
        other.start()
        time.sleep(1.0)
    other.join(timeout=60)
    assert not errors, errors
    assert sorted(first) == sorted(ids)
    assert second == []  # nothing handled twice, so no second message
    with transaction(sessions) as session:
        requeued = session.scalar(
            select(func.count())
            .select_from(JobEventRow)
            .where(JobEventRow.job_id.in_(ids), JobEventRow.kind == "requeued")
        )
        messages = session.scalar(
            select(func.count()).select_from(JobOutboxRow).where(JobOutboxRow.job_id.in_(ids))
        )
    assert requeued == JOBS
    assert messages == JOBS
