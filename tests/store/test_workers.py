"""Workers on the database, and a reaper that never re-sends a queued job without limit
(on SQLite and on a real PostgreSQL alike)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from store import jobs, outbox, workers
from store.db import transaction
from store.tables import JobEventRow, JobOutboxRow, JobRow, WorkerRow, utcnow
from tests.services import database_with_tenant

TENANT = "ten_worker_tests"
SPEC = {"model_id": "mdl_x", "eval_dataset_id": "ds_x", "steps": [{"method": "quantize"}]}
BASE_S = 300.0  # requeue_queued_after_s
DEAD_AFTER_S = 60.0


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with database_with_tenant(request, tmp_path, TENANT, "worker-tests") as (
        engine,
        factory,
    ):
        yield factory
        with engine.begin() as connection:  # the session database is shared
            connection.execute(JobRow.__table__.delete())
            connection.execute(WorkerRow.__table__.delete())


def capabilities(
    queues: list[str], devices: list[str] | None = None, **kw: object
) -> workers.Capabilities:
    found = devices or ["cpu"]
    return workers.Capabilities(
        name=f"test@{'-'.join(queues)}",
        hostname="host",
        pid=1,
        queues=queues,
        concurrency=int(kw.get("concurrency", 1)),  # type: ignore[call-overload]
        runtimes={"onnxruntime": found, "openvino": ["cpu"]},
        devices=found,
        gpus=[{"index": 0, "name": "NVIDIA H200", "memory_bytes": 1}] if "cuda" in found else [],
        version="0.1.0",
    )


def register(sessions: sessionmaker[Session], queues: list[str], **kw: object) -> str:
    with transaction(sessions) as session:
        return workers.register(session, capabilities(queues, **kw))  # type: ignore[arg-type]


def age_worker(sessions: sessionmaker[Session], worker_id: str, seconds: float) -> None:
    with transaction(sessions) as session:
        session.execute(
            update(WorkerRow)
            .where(WorkerRow.id == worker_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def services(sessions: sessionmaker[Session], *queues: str) -> dict[str, workers.QueueService]:
    with transaction(sessions) as session:
        return workers.queue_services(session, queues, dead_after_s=DEAD_AFTER_S)


def new_job(sessions: sessionmaker[Session], queue: str = "cpu", age_s: float = 0.0) -> str:
    with transaction(sessions) as session:
        job, _ = jobs.create_job(
            session, tenant_id=TENANT, spec=SPEC, queue=queue, request_sha256="a" * 64,
            idempotency_key=None,
        )  # fmt: skip
        session.flush()
        # the message left the outbox (these tests are about what the reaper does next)
        session.execute(delete(JobOutboxRow).where(JobOutboxRow.job_id == job.id))
        sent = utcnow() - timedelta(seconds=age_s)
        session.execute(
            update(JobRow).where(JobRow.id == job.id).values(created_at=sent, enqueued_at=sent)
        )
        return job.id


def make_due(sessions: sessionmaker[Session], job_id: str, seconds_ago: float) -> None:
    """Pretend the job's last message went out `seconds_ago`."""
    with transaction(sessions) as session:
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(enqueued_at=utcnow() - timedelta(seconds=seconds_ago))
        )


def reap(
    sessions: sessionmaker[Session], *, max_resends: int = 3, expiry_s: float = 3600
) -> list[str]:
    with transaction(sessions) as session:
        names = {"cpu", "gpu", *jobs.queued_queues(session)}
        seen = workers.queue_services(session, names, dead_after_s=DEAD_AFTER_S)
        recovered = [
            job.id
            for job in jobs.reap(
                session,
                requeue_queued_after_s=BASE_S,
                max_attempts=3,
                max_resends=max_resends,
                queues=seen,
                absent_worker_expiry_s=expiry_s,
            )
        ]
    outbox.drain(sessions, lambda job_id, queue: None)  # the broker took the messages
    return recovered


def job(sessions: sessionmaker[Session], job_id: str) -> JobRow:
    with transaction(sessions) as session:
        return jobs.get_job(session, job_id, tenant_id=None)


def events(sessions: sessionmaker[Session], job_id: str, kind: str) -> list[JobEventRow]:
    with transaction(sessions) as session:
        return list(
            session.scalars(
                select(JobEventRow).where(JobEventRow.job_id == job_id, JobEventRow.kind == kind)
            )
        )


# --- registration and liveness ---------------------------------------------------------------


def test_a_registered_worker_is_live_until_its_beats_stop(sessions: sessionmaker[Session]) -> None:
    worker_id = register(sessions, ["cpu"])
    assert services(sessions, "cpu")["cpu"].live == 1
    age_worker(sessions, worker_id, DEAD_AFTER_S + 1)
    assert services(sessions, "cpu")["cpu"].live == 0
    with transaction(sessions) as session:
        assert workers.heartbeat(session, worker_id, active=0)
    assert services(sessions, "cpu")["cpu"].live == 1


def test_a_stopped_worker_is_not_live(sessions: sessionmaker[Session]) -> None:
    worker_id = register(sessions, ["cpu"])
    with transaction(sessions) as session:
        workers.mark_stopped(session, worker_id)
    assert services(sessions, "cpu")["cpu"].live == 0


def test_a_heartbeat_for_a_forgotten_row_says_so(sessions: sessionmaker[Session]) -> None:
    worker_id = register(sessions, ["cpu"])
    age_worker(sessions, worker_id, 3600)
    with transaction(sessions) as session:
        assert workers.forget_dead(session, older_than_s=600) == 1
        assert not workers.heartbeat(session, worker_id, active=0)


def test_a_queue_is_served_for_a_device_only_by_workers_that_have_it(
    sessions: sessionmaker[Session],
) -> None:
    register(sessions, ["gpu"], devices=["cpu"])
    gpu = services(sessions, "gpu")["gpu"]
    assert gpu.live == 1
    assert not gpu.serves("cuda", "onnxruntime")
    register(sessions, ["gpu"], devices=["cpu", "cuda"])
    assert services(sessions, "gpu")["gpu"].serves("cuda", "onnxruntime")
    assert not services(sessions, "gpu")["gpu"].serves("cuda", "openvino")


def test_a_queue_whose_live_workers_are_all_busy_is_saturated(
    sessions: sessionmaker[Session],
) -> None:
    worker_id = register(sessions, ["cpu"], concurrency=2)
    with transaction(sessions) as session:
        workers.heartbeat(session, worker_id, active=1)
    assert not services(sessions, "cpu")["cpu"].saturated
    with transaction(sessions) as session:
        workers.heartbeat(session, worker_id, active=2)
    assert services(sessions, "cpu")["cpu"].saturated


# --- re-sends: bounded, backed off, only where a worker listens ----------------------------------


def test_re_sends_back_off_and_each_is_an_event(sessions: sessionmaker[Session]) -> None:
    register(sessions, ["cpu"])
    job_id = new_job(sessions, age_s=BASE_S + 1)
    assert reap(sessions) == [job_id]  # first re-send after BASE_S
    make_due(sessions, job_id, BASE_S + 1)
    assert reap(sessions) == []  # the second waits twice as long
    make_due(sessions, job_id, 2 * BASE_S + 1)
    assert reap(sessions) == [job_id]
    assert job(sessions, job_id).resends == 2
    requeued = events(sessions, job_id, "requeued")
    assert [e.data["resend"] for e in requeued] == [1, 2]
    assert "2 of at most 3" in requeued[-1].message


def test_a_job_nothing_claims_fails_after_max_resends(sessions: sessionmaker[Session]) -> None:
    register(sessions, ["cpu"])
    job_id = new_job(sessions, age_s=BASE_S + 1)
    for resend in range(2):
        assert reap(sessions, max_resends=2) == [job_id]
        make_due(sessions, job_id, BASE_S * 2 ** (resend + 1) + 1)
    assert reap(sessions, max_resends=2) == []
    failed = job(sessions, job_id)
    assert (failed.state, failed.error_code) == ("failed", "never_claimed")
    assert "sent 3 times" in (failed.error_message or "")


def test_a_claim_resets_the_count_of_re_sends(sessions: sessionmaker[Session]) -> None:
    register(sessions, ["cpu"])
    job_id = new_job(sessions, age_s=BASE_S + 1)
    reap(sessions)
    with transaction(sessions) as session:
        assert jobs.claim(session, job_id, worker="w", lease_s=60) == 1
    assert job(sessions, job_id).resends == 0


def test_no_re_send_to_a_queue_no_live_worker_consumes(sessions: sessionmaker[Session]) -> None:
    register(sessions, ["cpu"])
    job_id = new_job(sessions, queue="gpu", age_s=BASE_S * 100)
    assert reap(sessions, expiry_s=10 * BASE_S * 100) == []
    assert job(sessions, job_id).state == "queued"
    assert events(sessions, job_id, "requeued") == []


def test_a_job_whose_queue_stays_unserved_expires_with_no_worker_available(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions, queue="gpu", age_s=7200)
    assert reap(sessions, expiry_s=3600) == []
    expired = job(sessions, job_id)
    assert (expired.state, expired.error_code) == ("failed", "no_worker_available")
    assert "gpu" in (expired.error_message or "")
    assert events(sessions, job_id, "failed")[0].data["error_code"] == "no_worker_available"


def test_expiry_counts_from_when_the_queue_last_had_a_worker(
    sessions: sessionmaker[Session],
) -> None:
    # queued two hours ago behind a long job; the queue's worker died ten minutes ago
    gpu_worker = register(sessions, ["gpu"], devices=["cpu", "cuda"])
    age_worker(sessions, gpu_worker, 600)
    job_id = new_job(sessions, queue="gpu", age_s=7200)
    reap(sessions, expiry_s=3600)
    assert job(sessions, job_id).state == "queued"
    age_worker(sessions, gpu_worker, 3601)
    reap(sessions, expiry_s=3600)
    assert job(sessions, job_id).error_code == "no_worker_available"


def test_jobs_of_a_busy_queue_wait_their_turn_without_re_sends(
    sessions: sessionmaker[Session],
) -> None:
    worker_id = register(sessions, ["cpu"])
    with transaction(sessions) as session:
        workers.heartbeat(session, worker_id, active=1)
    job_id = new_job(sessions, age_s=BASE_S * 1000)
    assert reap(sessions, max_resends=0) == []
    assert job(sessions, job_id).state == "queued"
