"""Workers as the API sees them: the admin list, readiness per queue, and submissions
refused (or queued, by the operator's choice) when no live worker serves the job."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from store import workers
from store.db import transaction
from store.tables import JobEventRow, WorkerRow, utcnow
from tests.api.conftest import Api, ApiFactory, Uploaded, assert_problem


def sessions_of(api: Api) -> sessionmaker[Session]:
    return api.client.app.state.services.sessions  # type: ignore[attr-defined,no-any-return]


def register(api: Api, queue: str, devices: list[str], *, age_s: float = 0.0) -> str:
    with transaction(sessions_of(api)) as session:
        worker_id = workers.register(
            session,
            workers.Capabilities(
                name=f"w-{queue}-{'-'.join(devices)}@host",
                hostname="host",
                pid=42,
                queues=[queue],
                concurrency=1,
                runtimes={"onnxruntime": devices, "openvino": ["cpu"]},
                devices=devices,
                gpus=(
                    [{"index": 0, "name": "NVIDIA H200", "memory_bytes": 150_000_000_000}]
                    if "cuda" in devices
                    else []
                ),
                version="0.1.0",
            ),
        )
        if age_s:
            session.flush()
            session.execute(
                update(WorkerRow)
                .where(WorkerRow.id == worker_id)
                .values(heartbeat_at=utcnow() - timedelta(seconds=age_s))
            )
        return worker_id


@pytest.fixture
def checked(make_api: ApiFactory) -> Api:
    """A service that refuses jobs no live worker serves (the production default)."""
    return make_api(absent_worker_policy="refuse")


def upload(api: Api, model_file: Path, dataset_file: Path) -> Uploaded:
    return Uploaded(model_id=api.model_id(model_file), dataset_id=api.dataset_id(dataset_file))


def cuda_spec(uploaded: Uploaded) -> dict[str, Any]:
    return uploaded.spec(device="cuda")


# --- GET /v1/workers ---------------------------------------------------------------------------


def test_the_admin_lists_workers_with_queues_devices_and_gpus(checked: Api) -> None:
    register(checked, checked.settings.queue_gpu, ["cpu", "cuda"])
    register(checked, checked.settings.queue_cpu, ["cpu"], age_s=3600)
    body = checked.client.get("/v1/workers").json()
    live, dead = body["items"]
    assert live["alive"] and not dead["alive"]
    assert live["queues"] == ["gpu"] and live["devices"] == ["cpu", "cuda"]
    assert live["gpus"] == [{"index": 0, "name": "NVIDIA H200", "memory_bytes": 150_000_000_000}]
    assert live["runtimes"]["onnxruntime"] == ["cpu", "cuda"]
    assert body["live_per_queue"] == {"cpu": 0, "gpu": 1}


def test_a_tenant_key_may_not_list_workers(checked: Api) -> None:
    assert_problem(checked.tenant("t").client.get("/v1/workers"), 403, "forbidden")


def test_no_key_may_not_list_workers(checked: Api) -> None:
    assert_problem(checked.with_token(None).client.get("/v1/workers"), 401, "unauthenticated")


# --- /readyz ----------------------------------------------------------------------------------


def test_readiness_counts_live_workers_per_queue_and_warns_of_unserved_ones(checked: Api) -> None:
    register(checked, "cpu", ["cpu"])
    response = checked.client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["workers"] == {"cpu": 1, "gpu": 0}
    assert body["warnings"] == ["no live worker consumes queue 'gpu'"]


def test_a_queue_the_operator_requires_makes_readiness_503_without_a_worker(
    make_api: ApiFactory,
) -> None:
    api = make_api(ready_requires_workers_for=["cpu"])
    body = assert_problem(api.client.get("/readyz"), 503, "not_ready")
    assert body["checks"]["workers:cpu"].startswith("failed: no live worker")
    register(api, "cpu", ["cpu"])
    assert api.client.get("/readyz").status_code == 200


def test_a_dead_worker_does_not_count_for_readiness(checked: Api) -> None:
    register(checked, "cpu", ["cpu"], age_s=checked.settings.worker_dead_after_s + 5)
    assert checked.client.get("/readyz").json()["workers"]["cpu"] == 0


# --- submission -----------------------------------------------------------------------------------


def test_a_cuda_job_with_no_gpu_worker_is_refused_naming_what_is_there(
    checked: Api, model_file: Path, dataset_file: Path
) -> None:
    register(checked, "cpu", ["cpu"])
    uploaded = upload(checked, model_file, dataset_file)
    body = assert_problem(checked.submit(cuda_spec(uploaded)), 422, "no_worker_for_target")
    assert body["queue"] == "gpu" and body["device"] == "cuda"
    assert "no live worker consumes queue 'gpu'" in body["detail"]
    assert [worker["queues"] for worker in body["available"]] == [["cpu"]]
    assert checked.row_counts()["jobs"] == 0


def test_a_gpu_queue_worker_without_cuda_does_not_serve_a_cuda_job(
    checked: Api, model_file: Path, dataset_file: Path
) -> None:
    register(checked, "gpu", ["cpu"])
    uploaded = upload(checked, model_file, dataset_file)
    body = assert_problem(checked.submit(cuda_spec(uploaded)), 422, "no_worker_for_target")
    assert "offer devices ['cpu']" in body["detail"]


def test_a_job_a_live_worker_serves_is_accepted(
    checked: Api, model_file: Path, dataset_file: Path
) -> None:
    register(checked, "gpu", ["cpu", "cuda"])
    register(checked, "cpu", ["cpu"])
    uploaded = upload(checked, model_file, dataset_file)
    assert checked.submit(cuda_spec(uploaded)).status_code == 202
    assert checked.submit(uploaded.spec()).status_code == 202


def test_a_cpu_job_with_no_worker_at_all_is_refused(
    checked: Api, model_file: Path, dataset_file: Path
) -> None:
    uploaded = upload(checked, model_file, dataset_file)
    body = assert_problem(checked.submit(uploaded.spec()), 422, "no_worker_for_target")
    assert body["queue"] == "cpu" and body["available"] == []


def test_queueing_for_absent_workers_accepts_the_job_and_says_so(
    make_api: ApiFactory, model_file: Path, dataset_file: Path
) -> None:
    api = make_api(absent_worker_policy="queue", absent_worker_expiry_s=900)
    uploaded = upload(api, model_file, dataset_file)
    response = api.submit(cuda_spec(uploaded))
    assert response.status_code == 202, response.text
    with sessions_of(api)() as session:
        (event,) = session.scalars(
            select(JobEventRow).where(
                JobEventRow.job_id == response.json()["id"],
                JobEventRow.kind == "waiting_for_worker",
            )
        )
    assert "no live worker consumes queue 'gpu'" in event.message
    assert "no_worker_available" in event.message and "900 s" in event.message
    assert event.data["expires_after_s"] == 900


def test_a_batch_for_a_device_no_worker_serves_is_refused_whole(
    checked: Api, model_file: Path, dataset_file: Path
) -> None:
    register(checked, "cpu", ["cpu"])
    body = {
        "model_ids": [checked.model_id(model_file, variant=str(n)) for n in range(2)],
        "spec": {
            "eval_dataset_id": checked.dataset_id(dataset_file),
            "device": "cuda",
            "steps": [{"method": "quantize", "mode": "dynamic"}],
        },
    }
    assert_problem(checked.client.post("/v1/batches", json=body), 422, "no_worker_for_target")
    assert checked.row_counts()["jobs"] == 0


def test_a_replayed_submission_is_answered_even_after_the_worker_left(
    checked: Api, model_file: Path, dataset_file: Path
) -> None:
    worker_id = register(checked, "cpu", ["cpu"])
    uploaded = upload(checked, model_file, dataset_file)
    first = checked.submit(uploaded.spec(), key="same")
    assert first.status_code == 202
    with transaction(sessions_of(checked)) as session:
        workers.mark_stopped(session, worker_id)
    again = checked.submit(uploaded.spec(), key="same")
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]


def test_metrics_count_live_workers_per_queue(checked: Api) -> None:
    from tests.api.test_metrics import scrape

    register(checked, "gpu", ["cpu", "cuda"])
    register(checked, "cpu", ["cpu"], age_s=3600)
    samples = scrape(checked)
    assert samples[("squeeze_workers_live", (("queue", "gpu"),))] == 1
    assert samples[("squeeze_workers_live", (("queue", "cpu"),))] == 0
