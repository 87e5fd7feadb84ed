"""One GPU job end to end (marked `gpu`: scripts/gpu-check.sh runs it on a GPU machine):
the API, a real worker on the gpu queue that registers CUDA, and a cuda job that trains
and measures there. Embedded profile, so a GPU box needs no database or broker server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.api.conftest import ADMIN_TOKEN
from tests.conftest import DigitsFiles
from tests.integration.conftest import Deployment
from tests.services import WorkerProcess, fast_test_settings, wait_for

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture
def gpu_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    monkeypatch.chdir(tmp_path)  # kombu's file-system transport writes ./control
    settings = fast_test_settings(
        tmp_path / "data",
        admin_api_key=ADMIN_TOKEN,
        absent_worker_policy="refuse",
        worker_heartbeat_s=1.0,
        task_soft_time_limit_s=900,
        task_hard_time_limit_s=1000,
        broker_visibility_timeout_s=1100,
    )
    client = TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    client.__enter__()
    deployment = Deployment(settings, client, tmp_path)
    worker = WorkerProcess(settings, tmp_path / "gpu-worker.log", queues=[settings.queue_gpu])
    deployment.workers.append(worker.start())
    yield deployment
    worker.stop()
    client.__exit__(None, None, None)


def test_a_cuda_job_runs_on_a_gpu_worker(
    gpu_deployment: Deployment, digits_files: DigitsFiles
) -> None:
    deployment = gpu_deployment
    registered = wait_for(
        lambda: any(w["alive"] for w in deployment.get("/v1/workers")["items"]), 120, 0.5
    )
    assert registered, deployment.worker_logs()
    (worker,) = deployment.get("/v1/workers")["items"]
    assert "cuda" in worker["devices"], worker
    assert worker["gpus"] and worker["gpus"][0]["memory_bytes"] > 0
    spec = deployment.upload_digits(digits_files)
    spec.update(
        device="cuda",
        train_dataset_id=spec["calibration_dataset_id"],
        steps=[{"method": "prune", "kind": "structured", "sparsity": 0.25,
                "fine_tune": {"epochs": 1}}],
    )  # fmt: skip
    job = deployment.wait_final(deployment.submit(spec), timeout_s=900)
    assert job["state"] == "succeeded", job
    events = deployment.get(f"/v1/jobs/{job['id']}/events?limit=500")["items"]
    assert any("training_device" in str(e.get("data")) and "cuda" in str(e["data"]) for e in events)
