"""The job outbox on SQLite and a real PostgreSQL: a job's message is committed with the
job, sent once, kept (with the broker's error) while the broker refuses it, and never
sent for a job that ended meanwhile."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from store import jobs, outbox
from store.db import transaction
from store.tables import JobOutboxRow, JobRow
from tests.services import database_with_tenant

TENANT = "ten_outbox"
SPEC = {"model_id": "mdl_x", "eval_dataset_id": "ds_x", "steps": [{"method": "quantize"}]}


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with database_with_tenant(request, tmp_path, TENANT, "outbox") as (
        engine,
        factory,
    ):
        yield factory
        with engine.begin() as connection:  # the session database is shared
            connection.execute(JobRow.__table__.delete().where(JobRow.tenant_id == TENANT))


def new_job(session: Session, index: int = 0) -> str:
    job, _ = jobs.create_job(
        session, tenant_id=TENANT, spec=SPEC, queue="cpu", request_sha256=f"{index:064d}",
        idempotency_key=None,
    )  # fmt: skip
    return job.id


def waiting(sessions: sessionmaker[Session]) -> list[JobOutboxRow]:
    with transaction(sessions) as session:
        return list(
            session.scalars(
                select(JobOutboxRow)
                .join(JobRow, JobRow.id == JobOutboxRow.job_id)
                .where(JobRow.tenant_id == TENANT)
            )
        )


def test_the_message_is_written_with_the_job_or_not_at_all(
    sessions: sessionmaker[Session],
) -> None:
    with pytest.raises(RuntimeError), transaction(sessions) as session:
        new_job(session)
        raise RuntimeError("the request failed before its commit")
    assert waiting(sessions) == []
    with transaction(sessions) as session:
        job_id = new_job(session)
    assert [row.job_id for row in waiting(sessions)] == [job_id]
    with transaction(sessions) as session:
        assert outbox.backlog(session).pending == 1


def test_a_refused_send_keeps_the_message_with_the_error_and_a_later_pass_sends_it(
    sessions: sessionmaker[Session],
) -> None:
    with transaction(sessions) as session:
        first, second = new_job(session, 1), new_job(session, 2)

    def broker_down(job_id: str, queue: str) -> None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    result = outbox.drain(sessions, broker_down)
    assert result.sent == [] and result.error is not None and "refused" in result.error
    rows = {row.job_id: row for row in waiting(sessions)}
    assert set(rows) == {first, second}  # the pass stopped at the first refusal
    assert rows[first].attempts == 1 and "refused" in (rows[first].last_error or "")

    sent: list[tuple[str, str]] = []
    assert outbox.drain(sessions, lambda j, q: sent.append((j, q))).sent == [first, second]
    assert sent == [(first, "cpu"), (second, "cpu")]
    assert waiting(sessions) == []
    with transaction(sessions) as session:
        assert jobs.get_job(session, first, tenant_id=None).enqueued_at is not None
        assert outbox.backlog(session) == outbox.Backlog(pending=0, oldest_age_s=None)


def test_a_job_cancelled_before_its_message_left_is_not_sent(
    sessions: sessionmaker[Session],
) -> None:
    with transaction(sessions) as session:
        job_id = new_job(session)
    with transaction(sessions) as session:
        jobs.request_cancel(session, job_id, tenant_id=None)
    sent: list[str] = []
    assert outbox.drain(sessions, lambda j, q: sent.append(j)).sent == []
    assert sent == [] and waiting(sessions) == []


def test_concurrent_drainers_send_each_message_once(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        ids = [new_job(session, index) for index in range(40)]
    sent: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def slow_send(job_id: str, queue: str) -> None:
        with lock:
            sent.append(job_id)

    def drainer() -> None:
        start.wait()
        outbox.drain(sessions, slow_send)

    threads = [threading.Thread(target=drainer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(sent) == sorted(ids)  # every message once, none twice
    assert waiting(sessions) == []
