"""A job nothing consumes is never re-sent without limit: a `cuda` job with no GPU worker
gets no re-sends at all and fails `no_worker_available` naming its queue, and a job whose
queue has a worker that never claims it fails `never_claimed` after `max_resends`; either
way the tenant's concurrent-job slot is free again."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from store.tables import JobEventRow, JobOutboxRow, JobRow, utcnow
from tests.api.conftest import ApiFactory, Uploaded, assert_problem
from tests.api.test_workers import register, sessions_of
from worker.enqueue import JobQueue
from worker.reaper import reap_once


def age(api_sessions: sessionmaker[Session], job_id: str, seconds: float) -> None:
    with api_sessions.begin() as session:
        session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(
                created_at=utcnow() - timedelta(seconds=seconds),
                enqueued_at=utcnow() - timedelta(seconds=seconds),
            )
        )


def requeued(api_sessions: sessionmaker[Session], job_id: str) -> int:
    with api_sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(JobEventRow)
                .where(JobEventRow.job_id == job_id, JobEventRow.kind == "requeued")
            )
        )


def test_a_cuda_job_with_no_gpu_worker_is_not_re_sent_and_fails_freeing_its_slot(
    make_api: ApiFactory, model_file: Path, dataset_file: Path
) -> None:
    admin = make_api(
        absent_worker_policy="queue", absent_worker_expiry_s=600, requeue_queued_after_s=30
    )
    tenant = admin.tenant("one-slot", quota_concurrent_jobs=1)
    uploaded = Uploaded(tenant.model_id(model_file), tenant.dataset_id(dataset_file))
    register(admin, admin.settings.queue_cpu, ["cpu"])  # CPU workers only
    job_id = tenant.submit(uploaded.spec(device="cuda")).json()["id"]
    assert_problem(tenant.submit(uploaded.spec()), 429, "quota_exceeded")
    messages = len(admin.broker_messages())
    sessions = sessions_of(admin)
    queue = JobQueue(admin.settings)

    for minutes in (5, 9):  # due for a re-send many times over, but nothing consumes gpu
        age(sessions, job_id, minutes * 60)
        assert reap_once(sessions, queue, admin.settings) == []
    assert requeued(sessions, job_id) == 0 and len(admin.broker_messages()) == messages

    age(sessions, job_id, 601)
    reap_once(sessions, queue, admin.settings)
    job = tenant.client.get(f"/v1/jobs/{job_id}").json()
    assert (job["state"], job["error"]["code"]) == ("failed", "no_worker_available")
    assert f"queue {admin.settings.queue_gpu!r}" in job["error"]["message"]
    assert tenant.submit(uploaded.spec()).status_code == 202  # the slot is free again


def test_re_sends_stop_after_max_resends_with_never_claimed(
    make_api: ApiFactory, model_file: Path, dataset_file: Path
) -> None:
    admin = make_api(max_resends=2, requeue_queued_after_s=30)
    tenant = admin.tenant("stuck", quota_concurrent_jobs=1)
    uploaded = Uploaded(tenant.model_id(model_file), tenant.dataset_id(dataset_file))
    register(admin, admin.settings.queue_cpu, ["cpu"])  # live, but it never claims
    job_id = tenant.submit(uploaded.spec()).json()["id"]
    sessions = sessions_of(admin)
    queue = JobQueue(admin.settings)
    sent_again = []
    for _ in range(6):
        age(sessions, job_id, 10_000)
        sent_again += reap_once(sessions, queue, admin.settings)
    assert sent_again == [job_id, job_id]  # max_resends, then no more
    assert requeued(sessions, job_id) == 2
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(JobOutboxRow)) == 0
    job = tenant.client.get(f"/v1/jobs/{job_id}").json()
    assert (job["state"], job["error"]["code"]) == ("failed", "never_claimed")
    assert admin.settings.queue_cpu in job["error"]["message"]
    assert tenant.submit(uploaded.spec()).status_code == 202
