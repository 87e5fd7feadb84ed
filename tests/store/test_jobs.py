"""The job lifecycle on the database, on SQLite and on a real PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from store import jobs
from store.db import make_engine, make_sessionmaker, transaction
from store.migrate import upgrade_to_head
from store.tables import JobOutboxRow, JobRow, TenantRow, utcnow

TENANT = "ten_store_tests"
SPEC = {"model_id": "mdl_x", "eval_dataset_id": "ds_x", "steps": [{"method": "quantize"}]}


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade_to_head(url)
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:  # the tenant every job of these tests belongs to
        if session.get(TenantRow, TENANT) is None:
            session.add(TenantRow(id=TENANT, name="store-tests", submissions=0))
    yield factory
    with engine.begin() as connection:  # the session database is shared by these tests
        connection.execute(JobRow.__table__.delete())
    engine.dispose()


def new_job(sessions: sessionmaker[Session], key: str | None = None, body: str = "a") -> str:
    with transaction(sessions) as session:
        job, _ = jobs.create_job(
            session,
            tenant_id=TENANT,
            spec=SPEC,
            queue="cpu",
            request_sha256=body * 64,
            idempotency_key=key,
        )
        # the message left the outbox (these tests are about the job's row)
        session.execute(delete(JobOutboxRow).where(JobOutboxRow.job_id == job.id))
        return job.id


def claim(sessions: sessionmaker[Session], job_id: str, lease_s: float = 60) -> int | None:
    with transaction(sessions) as session:
        return jobs.claim(session, job_id, worker="w", lease_s=lease_s)


def state_of(sessions: sessionmaker[Session], job_id: str) -> JobRow:
    with transaction(sessions) as session:
        return jobs.get_job(session, job_id, tenant_id=TENANT)


def expire_lease(sessions: sessionmaker[Session], job_id: str) -> None:
    with transaction(sessions) as session:
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def reap(sessions: sessionmaker[Session], max_attempts: int = 3) -> list[str]:
    with transaction(sessions) as session:
        return [
            job.id
            for job in jobs.reap(session, requeue_queued_after_s=3600, max_attempts=max_attempts)
        ]


def test_a_job_claimed_twice_runs_once(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    assert claim(sessions, job_id) == 1
    assert claim(sessions, job_id) is None
    assert state_of(sessions, job_id).state == "running"


def test_finish_publishes_state_result_and_artifacts_together(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    attempt = claim(sessions, job_id)
    assert attempt is not None
    artifact = jobs.ArtifactRecord("model.onnx", "application/octet-stream", "0" * 64, 10)
    with transaction(sessions) as session:
        assert jobs.finish(
            session, job_id, attempt, state="succeeded", result={"ok": 1}, artifacts=[artifact]
        )
    job = state_of(sessions, job_id)
    assert (job.state, job.progress, job.result) == ("succeeded", 1.0, {"ok": 1})
    with transaction(sessions) as session:
        assert [a.name for a in jobs.list_artifacts(session, job_id)] == ["model.onnx"]


def test_an_expired_lease_requeues_the_job_and_fences_the_old_attempt(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    assert claim(sessions, job_id) == 1
    expire_lease(sessions, job_id)
    assert reap(sessions) == [job_id]
    assert state_of(sessions, job_id).state == "queued"
    assert claim(sessions, job_id) == 2
    with transaction(sessions) as session:
        assert not jobs.renew_lease(session, job_id, 1, lease_s=60)
        assert not jobs.record_progress(
            session, job_id, 1, progress=0.5, current_step=None, message="old", data={}
        )
        assert not jobs.finish(session, job_id, 1, state="succeeded")
        assert jobs.finish(session, job_id, 2, state="succeeded")
    assert state_of(sessions, job_id).attempt == 2


def test_a_live_lease_is_not_reaped(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    claim(sessions, job_id)
    assert reap(sessions) == []
    assert state_of(sessions, job_id).state == "running"


def test_attempts_are_capped(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    for _ in range(2):
        claim(sessions, job_id)
        expire_lease(sessions, job_id)
        reap(sessions, max_attempts=2)
    job = state_of(sessions, job_id)
    assert (job.state, job.error_code, job.attempt) == ("failed", "attempts_exhausted", 2)


def test_a_queued_job_whose_message_was_never_sent_is_sent_again(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    with transaction(sessions) as session:
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(created_at=utcnow() - timedelta(hours=2))
        )
    assert reap(sessions) == [job_id]
    assert reap(sessions) == []  # sent: not again until requeue_queued_after_s passes


def test_cancelling_a_queued_job_ends_it_at_once(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with transaction(sessions) as session:
        assert jobs.request_cancel(session, job_id, tenant_id=TENANT).state == "cancelled"
    assert claim(sessions, job_id) is None
    with transaction(sessions) as session, pytest.raises(jobs.JobAlreadyFinal):
        jobs.request_cancel(session, job_id, tenant_id=TENANT)


def test_cancelling_a_running_job_flags_it_for_its_worker(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    claim(sessions, job_id)
    with transaction(sessions) as session:
        assert jobs.request_cancel(session, job_id, tenant_id=TENANT).state == "running"
        assert jobs.is_cancel_requested(session, job_id)


def test_the_same_idempotency_key_and_body_return_the_same_job(
    sessions: sessionmaker[Session],
) -> None:
    first = new_job(sessions, key="k-1")
    assert new_job(sessions, key="k-1") == first
    with pytest.raises(jobs.IdempotencyConflict):
        new_job(sessions, key="k-1", body="b")


def test_pagination_visits_every_job_once_newest_first(sessions: sessionmaker[Session]) -> None:
    created = [new_job(sessions) for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        with transaction(sessions) as session:
            rows, cursor = jobs.list_jobs(
                session, tenant_id=TENANT, state=None, limit=2, cursor=cursor
            )
            seen += [row.id for row in rows]
        if cursor is None:
            break
    assert seen == list(reversed(created))


@pytest.mark.parametrize(
    "cursor",
    ["not-base64!", "bnVsbA", "WzEsIDJd", "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwgImpvYiJd"],
    ids=["garbage", "json-null", "wrong-types", "naive-datetime"],
)
def test_a_cursor_not_issued_by_the_service_is_refused(cursor: str) -> None:
    with pytest.raises(jobs.InvalidCursor):
        jobs.decode_cursor(cursor)


def record_memory(sessions: sessionmaker[Session], job_id: str, attempt: int, growth: int) -> bool:
    with transaction(sessions) as session:
        return jobs.record_memory_sample(
            session,
            job_id,
            attempt,
            peak_rss_bytes=growth + 100,
            growth_bytes=growth,
            limit_bytes=1000,
        )


def test_a_lost_attempt_near_its_memory_limit_fails_out_of_memory_and_is_not_retried(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    assert claim(sessions, job_id) == 1
    assert record_memory(sessions, job_id, 1, 500)
    assert record_memory(sessions, job_id, 1, 950)  # the last sample is the one that counts
    expire_lease(sessions, job_id)

    assert reap(sessions) == []  # not sent again

    job = state_of(sessions, job_id)
    assert (job.state, job.error_code, job.attempt) == ("failed", "memory_limit_exceeded", 1)
    assert "950 of its memory limit of 1000 bytes" in (job.error_message or "")
    with transaction(sessions) as session:
        final = [
            event
            for event in jobs.list_events(session, job_id, after_id=0, limit=100)
            if event.kind == "failed"
        ]
    assert [event.data for event in final] == [
        {"peak_rss_bytes": 1050, "limit_bytes": 1000, "worker_lost": True}
    ]


def test_a_lost_attempt_far_from_its_memory_limit_is_requeued_as_a_lost_worker(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    assert claim(sessions, job_id) == 1
    assert record_memory(sessions, job_id, 1, 500)
    expire_lease(sessions, job_id)

    assert reap(sessions) == [job_id]
    assert state_of(sessions, job_id).state == "queued"


def test_an_earlier_attempts_memory_does_not_count_for_the_next(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    assert claim(sessions, job_id) == 1
    expire_lease(sessions, job_id)
    assert reap(sessions) == [job_id]
    assert claim(sessions, job_id) == 2
    assert not record_memory(sessions, job_id, 1, 990)  # fenced: attempt 1 lost the job
    expire_lease(sessions, job_id)

    assert reap(sessions) == [job_id]
